"""A client generated from openapi/gateway.json by openapi-python-client, with no warning, works
unchanged against a live gateway: a password-protected text-to-image job, the job, its file
(refused without the password), the balance and the ledger. Nothing generated is committed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import Gateway
from tests.e2e.processes import REPO

DOCUMENT = REPO / "openapi" / "gateway.json"
PACKAGE = "gateway_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("client")
    bin_dir = Path(sys.executable).parent
    generate = ["generate", "--path", str(DOCUMENT), "--meta", "none", "--output-path", str(out / PACKAGE)]
    result = subprocess.run(
        [str(bin_dir / "openapi-python-client"), *generate],
        capture_output=True,
        text=True,
        timeout=120,
        # ruff on PATH: the generator formats what it wrote with it.
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_makes_and_downloads_a_protected_image(
    generated: ModuleType, gateway: Gateway, live_gateway: str
) -> None:
    _, key = await gateway.tenant(credits=10)
    with generated.AuthenticatedClient(base_url=live_gateway, token=key, raise_on_unexpected_status=True) as client:
        models = _module("models")
        create = _module("api.images.create_text_to_image")
        get_job = _module("api.jobs.get_job")
        download = _module("api.files.download_file")
        balance = _module("api.billing.get_balance")
        ledger = _module("api.billing.list_ledger_entries")

        body = models.TextToImageRequest(prompt="a lighthouse", width=256, height=256, download_password="s3cret pw")
        job = create.sync(client=client, body=body)
        assert isinstance(job, models.JobView), job
        assert job.state == "succeeded"
        assert job.download_protected is True

        fetched = get_job.sync(job.id, client=client)
        assert isinstance(fetched, models.JobView)
        file_id = fetched.results[0].file_id
        assert isinstance(file_id, str)

        refused = download.sync_detailed(file_id, client=client)
        assert refused.status_code == 401
        assert isinstance(refused.parsed, models.Problem)
        assert refused.parsed.type_.endswith("/unauthenticated")

        wrong = download.sync(file_id, client=client, x_download_password="guess")
        assert isinstance(wrong, models.Problem)
        assert wrong.status == 403

        image = download.sync(file_id, client=client, x_download_password="s3cret pw")
        assert isinstance(image, generated.types.File)
        assert image.payload.read().startswith(b"\x89PNG")

        wallet = balance.sync(client=client)
        assert isinstance(wallet, models.Balance)
        assert wallet.balance < 10
        entries = ledger.sync(client=client)
        assert isinstance(entries, models.LedgerPage)
        assert [e.kind for e in entries.data] == ["charge", "topup"]
