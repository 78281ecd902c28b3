"""The OpenAPI document is the contract: schemathesis, run against a live `gateway serve` on the
embedded database and the fake vendors, finds no answer the document does not describe.

One run with a tenant key over the tenant operations, one with an operator key over /v1/admin;
all phases (examples, coverage, fuzzing, stateful) and every check. Examples are bounded to keep
the two runs near three minutes on two cores; `bash scripts/contract` runs a longer one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from gateway.auth import tokens
from gateway.db import billing as bq
from gateway.db import keys as kq
from tests.e2e.processes import REPO, GatewayProcess, cluster
from tests.fakes.aithriving import FakeAithriving
from tests.fakes.api2convert import FakeApi2Convert
from tests.fakes.qolaba import FakeQolaba

HOOKS = "tests.contract.schemathesis_hooks"
CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = int(os.environ.get("CONTRACT_MAX_EXAMPLES", "5"))
# One schemathesis run may take this long; the test, past pyproject's per-test `timeout`, a minute more.
SCHEMATHESIS_TIMEOUT_S = 600


@dataclass
class Keys:
    tenant: str
    tenant_key_id: str
    operator: str
    operator_key_id: str


def _config(path: Path, a2c: FakeApi2Convert, qolaba: FakeQolaba, ait: FakeAithriving) -> Path:
    path.write_text(
        f"""
db_pool_max = 8
sync_wait_s = 5
fetch_allow_hosts = ["127.0.0.1"]

[engines.a2c]
kind = "api2convert"
base_url = "{a2c.base_url}"
api_key_env = "A2C_KEY"
poll_interval_s = 0.01
max_poll_interval_s = 0.05

[engines.qolaba]
kind = "qolaba"
base_url = "{qolaba.base_url}"
api_key_env = "QOLABA_KEY"
poll_interval_s = 0.01
max_poll_interval_s = 0.05

[engines.ait]
kind = "aithriving"
base_url = "{ait.base_url}"
api_key_env = "AITHRIVING_KEY"

[routes]
"text-to-image" = ["a2c", "qolaba"]
"image-to-image" = ["ait"]
"inpaint" = ["a2c"]
"""
    )
    return path


async def _keys(database_url: str) -> Keys:
    tenant_id, tenant_key_id, operator_key_id = uuid4(), uuid4(), uuid4()
    tenant, operator = tokens.new_key("tenant"), tokens.new_key("operator")
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await kq.insert_tenant(conn, tenant_id, "contract", "whsec_dGVzdA==", 64)
            await bq.credit(
                conn, tenant_id=tenant_id, kind="topup", amount=10**9, reason="contract", operator_key_id=None
            )
            await kq.insert_tenant_key(
                conn,
                key_id=tenant_key_id,
                tenant_id=tenant_id,
                name="contract",
                scopes=["generate", "jobs:read", "files:read", "usage:read", "keys:manage"],
                secret_hash=tokens.hash_key(tenant),
                hint=tokens.hint(tenant),
                rate_limit_per_minute=1_000_000,
            )
            await kq.insert_operator_key(
                conn,
                key_id=operator_key_id,
                name="contract",
                secret_hash=tokens.hash_key(operator),
                hint=tokens.hint(operator),
            )
    finally:
        await conn.close()
    return Keys(tenant, str(tenant_key_id), operator, str(operator_key_id))


@pytest.fixture
async def served(
    database_url: str,
    tmp_path: Path,
    fake_api2convert: FakeApi2Convert,
    fake_qolaba: FakeQolaba,
    fake_aithriving: FakeAithriving,
) -> AsyncIterator[tuple[GatewayProcess, Keys]]:
    env = {
        "GATEWAY_CONFIG": str(_config(tmp_path / "gateway.toml", fake_api2convert, fake_qolaba, fake_aithriving)),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DEMO_TENANT": "false",
        "A2C_KEY": fake_api2convert.api_key,
        "QOLABA_KEY": fake_qolaba.api_key,
        "AITHRIVING_KEY": fake_aithriving.api_key,
    }
    keys = await _keys(database_url)
    with cluster(env, tmp_path / "logs") as c:
        server = c.serve("api")
        await server.wait_ready()
        yield server, keys


def _schemathesis(server: GatewayProcess, workdir: Path, key: str, own_key_ids: str, *selection: str) -> str:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(CONFIG),
        "run",
        f"{server.base_url}/schema/openapi.json",
        "--header",
        f"Authorization: Bearer {key}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--workers",
        "1",
        "--no-color",
        *selection,
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "CONTRACT_OWN_KEY_IDS": own_key_ids,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # In a folder of its own: schemathesis keeps a cache of past failures (.schemathesis/) where it runs.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=SCHEMATHESIS_TIMEOUT_S, env=env, cwd=workdir, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{output[-30000:]}\n--- gateway log ---\n{server.log()}"
    print(
        output[output.find("=== WARNINGS") if "=== WARNINGS" in output else output.find("=== SUMMARY") :]
    )  # shown with -s, and in the report of a failure after it
    return output


@pytest.mark.slow
@pytest.mark.timeout(SCHEMATHESIS_TIMEOUT_S + 60)
def test_tenant_operations_answer_only_what_the_document_says(
    served: tuple[GatewayProcess, Keys], tmp_path: Path
) -> None:
    server, keys = served
    _schemathesis(server, tmp_path, keys.tenant, keys.tenant_key_id, "--exclude-path-regex", "^/v1/admin/")


@pytest.mark.slow
@pytest.mark.timeout(SCHEMATHESIS_TIMEOUT_S + 60)
def test_operator_operations_answer_only_what_the_document_says(
    served: tuple[GatewayProcess, Keys], tmp_path: Path
) -> None:
    server, keys = served
    _schemathesis(server, tmp_path, keys.operator, keys.operator_key_id, "--include-path-regex", "^/v1/admin/")
