"""Schemathesis hooks for the contract run (loaded through SCHEMATHESIS_HOOKS).

The fuzzer reuses ids it has seen in answers, so it would revoke or rotate the very key it
authenticates with and turn the rest of the run into 401s. The ids of its own keys come in
CONTRACT_OWN_KEY_IDS; a call about one of them is sent about an unknown key instead (a 404).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import schemathesis

_OWN = frozenset(filter(None, os.environ.get("CONTRACT_OWN_KEY_IDS", "").split(",")))


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    parameters = case.path_parameters
    if parameters and str(parameters.get("key_id")) in _OWN:
        parameters["key_id"] = str(uuid.uuid4())
