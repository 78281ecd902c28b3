"""`[storage] kind = "azure"`: what the loader requires, refuses and resolves, before any request."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.bootstrap import build_blob_store
from gateway.config import ConfigError, Settings, load_settings
from gateway.config_sources import setting_sources
from gateway.storage.azure import AzureBlobStore

KEY = base64.b64encode(b"an azure storage account key....").decode()
AZURE = '[storage]\nkind = "azure"\nbucket = "images"\naccount_name = "gwaccount"\n'


def _settings(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return load_settings({"AZURE_STORAGE_KEY": KEY} if environ is None else environ, config_path=path)


def test_azure_storage_resolves_its_key_and_defaults_to_the_public_cloud(tmp_path: Path) -> None:
    settings = _settings(tmp_path, AZURE)

    assert settings.storage.account_key == KEY
    assert settings.storage.azure_account_url == "https://gwaccount.blob.core.windows.net"
    assert settings.storage.presigns
    store = build_blob_store(settings)
    assert isinstance(store, AzureBlobStore)
    assert KEY not in repr(store)


def test_the_key_comes_from_the_variable_the_config_names(tmp_path: Path) -> None:
    settings = _settings(tmp_path, AZURE + 'account_key_env = "MY_AZURE_KEY"\n', {"MY_AZURE_KEY": KEY})

    assert settings.storage.account_key == KEY


@pytest.mark.parametrize(
    ("toml", "environ", "names"),
    [
        ('[storage]\nkind = "azure"\naccount_name = "gwaccount"\n', None, r"storage\.bucket"),
        ('[storage]\nkind = "azure"\nbucket = "images"\n', None, r"storage\.account_name"),
        (AZURE, {}, r"storage\.account_key_env: environment variable AZURE_STORAGE_KEY is not set"),
        (AZURE, {"AZURE_STORAGE_KEY": "not base64!"}, r"AZURE_STORAGE_KEY is not an Azure account key"),
        (AZURE.replace('"images"', '"Images"'), None, r"storage\.bucket: 'Images' is not an Azure container"),
        (AZURE.replace('"images"', '"im"'), None, r"storage\.bucket: 'im'"),
        (AZURE.replace('"images"', '"im--ages"'), None, r"storage\.bucket: 'im--ages'"),
        (AZURE + 'endpoint_url = "azurite:10000"\n', None, r"storage\.endpoint_url: must be an http\(s\) URL"),
        (AZURE + f'account_key = "{KEY}"\n', None, r"storage\.account_key may only come from the environment"),
    ],
    ids=[
        "no-container",
        "no-account",
        "key-unset",
        "key-not-base64",
        "uppercase-container",
        "short-container",
        "double-hyphen",
        "endpoint-not-a-url",
        "key-in-file",
    ],
)
def test_an_azure_config_that_cannot_work_fails_at_load_naming_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str] | None, names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        _settings(tmp_path, toml, environ)


def test_doctor_shows_the_account_key_masked(tmp_path: Path) -> None:
    settings = _settings(tmp_path, AZURE)

    rows = {key: (value, source) for key, value, source in setting_sources(settings, {"AZURE_STORAGE_KEY": KEY})}

    assert rows["storage.account_key"] == ("***", "environment (AZURE_STORAGE_KEY)")
    assert rows["storage.account_name"][0] == "gwaccount"
