"""The pieces every settings table shares: the loader's error, the secret string, positive numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

import msgspec


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


class Secret(str):
    """A string that never shows itself in reprs or logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


def env_secret(environ: Mapping[str, str], var: str | None, what: str, fix: str) -> Secret | None:
    """The value of the variable `var` names (None when no variable is named); refused when unset or empty.

    `what` is the settings key that names the variable, `fix` tells the operator what to export.
    """
    if var is None:
        return None
    if not environ.get(var):
        state = "is empty" if var in environ else "is not set"
        raise ConfigError(f"{what}: environment variable {var} {state}; {fix}")
    return Secret(environ[var])


def check_url(value: str, key: str) -> None:
    """Refuse a setting that must be an http(s) URL and is not; `key` names the setting."""
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{key}: must be an http(s) URL, got {value!r}")
