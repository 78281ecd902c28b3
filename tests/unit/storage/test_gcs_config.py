"""`[storage] kind = "gcs"`: what the loader requires, refuses and resolves, before any request."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.bootstrap import build_blob_store
from gateway.config import ConfigError, Settings, load_settings
from gateway.config_sources import setting_sources
from gateway.storage.gcs import GCSBlobStore

PEM = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    .decode()
)
KEY_INFO = {
    "type": "service_account",
    "project_id": "p",
    "private_key_id": "abc",
    "private_key": PEM,
    "client_email": "gw@p.iam.gserviceaccount.com",
    "client_id": "1",
    "token_uri": "https://oauth2.googleapis.com/token",
}
KEY = json.dumps(KEY_INFO)
GCS = '[storage]\nkind = "gcs"\nbucket = "gateway-images"\n'


def _settings(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return load_settings({"GOOGLE_SERVICE_ACCOUNT_KEY": KEY} if environ is None else environ, config_path=path)


def test_gcs_storage_keeps_only_the_signing_fields_of_the_key_and_defaults_to_google(tmp_path: Path) -> None:
    key = {**KEY_INFO, "gcs_base_url": "http://elsewhere", "disable_oauth": True}

    settings = _settings(tmp_path, GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps(key)})

    assert settings.storage.service_account_key is not None
    assert json.loads(settings.storage.service_account_key) == {
        name: KEY_INFO[name] for name in ("type", "client_email", "private_key", "private_key_id")
    }
    assert settings.storage.gcs_endpoint_url == "https://storage.googleapis.com"
    assert settings.storage.location == "gcs bucket gateway-images at https://storage.googleapis.com"
    assert settings.storage.presigns


def test_build_blob_store_makes_a_gcs_store_that_hides_its_key(tmp_path: Path) -> None:
    store = build_blob_store(_settings(tmp_path, GCS))

    assert isinstance(store, GCSBlobStore)
    assert "PRIVATE KEY" not in repr(store)


def test_a_private_key_that_is_not_an_rsa_key_stops_the_store_naming_the_setting(tmp_path: Path) -> None:
    broken = "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n"
    settings = _settings(tmp_path, GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps({**KEY_INFO, "private_key": broken})})

    with pytest.raises(ConfigError, match=r"storage\.service_account_key_env: the service account's private_key"):
        build_blob_store(settings)


def test_the_key_comes_from_the_variable_the_config_names(tmp_path: Path) -> None:
    settings = _settings(tmp_path, GCS + 'service_account_key_env = "MY_GCS_KEY"\n', {"MY_GCS_KEY": KEY})

    assert settings.storage.service_account_key is not None
    assert json.loads(settings.storage.service_account_key)["client_email"] == KEY_INFO["client_email"]


@pytest.mark.parametrize(
    ("toml", "environ", "names"),
    [
        ('[storage]\nkind = "gcs"\n', None, r"storage\.bucket: required"),
        (GCS, {}, r"storage\.service_account_key_env: environment variable GOOGLE_SERVICE_ACCOUNT_KEY is not set"),
        (GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": "not json"}, r"is not a service account's JSON key"),
        (GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": '{"client_email": "a@b"}'}, r"is not a service account's JSON key"),
        (GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": "[1, 2]"}, r"is not a service account's JSON key"),
        (
            GCS,
            {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps({**KEY_INFO, "private_key": "abc"})},
            r"the private_key in GOOGLE_SERVICE_ACCOUNT_KEY is not a PEM key",
        ),
        (
            GCS,
            {"GOOGLE_SERVICE_ACCOUNT_KEY": KEY, "GOOGLE_BEARER_TOKEN": "ya29.token"},
            r"GOOGLE_BEARER_TOKEN is set.*unset GOOGLE_BEARER_TOKEN",
        ),
        (
            GCS,
            {"GOOGLE_SERVICE_ACCOUNT_KEY": KEY, "GOOGLE_SERVICE_ACCOUNT_PATH": "/keys/sa.json"},
            r"GOOGLE_SERVICE_ACCOUNT_PATH is set",
        ),
        (GCS.replace("gateway-images", "Images"), None, r"storage\.bucket: 'Images' is not a Google Cloud Storage"),
        (GCS.replace("gateway-images", "ab"), None, r"storage\.bucket: 'ab'"),
        (GCS.replace("gateway-images", "google-images"), None, r"storage\.bucket: 'google-images'"),
        (GCS.replace("gateway-images", "goog-images"), None, r"storage\.bucket: 'goog-images'"),
        (GCS.replace("gateway-images", "x" * 64), None, r"storage\.bucket: 'x{64}'"),
        (GCS.replace("gateway-images", "a..b"), None, r"storage\.bucket: 'a\.\.b'"),
        (GCS + 'endpoint_url = "gcs:4443"\n', None, r"storage\.endpoint_url: must be an http\(s\) URL"),
        (GCS + f"service_account_key = '{KEY}'\n", None, r"storage\.service_account_key may only come from"),
    ],
    ids=[
        "no-bucket",
        "key-unset",
        "key-not-json",
        "key-without-private-key",
        "key-not-an-object",
        "private-key-not-pem",
        "bearer-token-in-environment",
        "key-path-in-environment",
        "uppercase-bucket",
        "short-bucket",
        "google-in-name",
        "goog-prefix",
        "long-bucket",
        "empty-dot-part",
        "endpoint-not-a-url",
        "key-in-file",
    ],
)
def test_a_gcs_config_that_cannot_work_fails_at_load_naming_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str] | None, names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        _settings(tmp_path, toml, environ)


@pytest.mark.parametrize("name", ["gateway_images", "a.b.c", "img-2026.example.com", "abc", "x" * 63])
def test_bucket_names_google_allows_are_accepted(tmp_path: Path, name: str) -> None:
    assert _settings(tmp_path, GCS.replace("gateway-images", name)).storage.bucket == name


def test_refusals_never_show_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, GCS, {"GOOGLE_SERVICE_ACCOUNT_KEY": json.dumps({**KEY_INFO, "client_email": 3})})

    assert "PRIVATE KEY" not in str(caught.value)


def test_doctor_shows_the_service_account_key_masked(tmp_path: Path) -> None:
    settings = _settings(tmp_path, GCS)

    rows = {
        key: (value, source) for key, value, source in setting_sources(settings, {"GOOGLE_SERVICE_ACCOUNT_KEY": KEY})
    }

    assert rows["storage.service_account_key"] == ("***", "environment (GOOGLE_SERVICE_ACCOUNT_KEY)")
    assert rows["storage.bucket"][0] == "gateway-images"
