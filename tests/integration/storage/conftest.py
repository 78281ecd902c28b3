"""Storage servers for the storage tests, started once per session on 127.0.0.1: S3 (moto), Azurite and GCS."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import boto3
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mypy_boto3_s3 import S3Client

from gateway.storage.azure import AzureBlobStore
from gateway.storage.gcs import GCSBlobStore
from gateway.storage.s3 import S3BlobStore
from tests.integration.storage import azurite as azurite_emulator
from tests.integration.storage.azurite import Azurite
from tests.integration.storage.verifying_gcs import VerifyingGCSServer
from tests.integration.storage.verifying_s3 import VerifyingS3Server

ACCESS_KEY = "AKIDGATEWAYTEST0001"
SECRET_KEY = "gateway/test+secret/key"  # slashes and plus exercise the signer's key handling
REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[VerifyingS3Server]:
    server = VerifyingS3Server({ACCESS_KEY: SECRET_KEY})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def boto_s3(s3_server: VerifyingS3Server) -> S3Client:
    """boto3 against the same server: the reference client our store must interoperate with."""
    return boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        # Plain signed payloads: aws-chunked trailers are a boto3 upload detail we do not speak.
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


@pytest.fixture
def bucket(boto_s3: S3Client) -> str:
    """A fresh bucket per test, so tests share the server but not their objects."""
    name = f"gateway-{uuid.uuid4().hex[:16]}"
    boto_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def store(s3_server: VerifyingS3Server, bucket: str) -> AsyncIterator[S3BlobStore]:
    store = S3BlobStore(
        endpoint_url=s3_server.endpoint_url,
        bucket=bucket,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        region=REGION,
    )
    yield store
    await store.aclose()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    if shutil.which("npm") is None:
        pytest.skip("Node.js (npm) is not on this machine: Azurite cannot run")
    server = Azurite.start(azurite_emulator.install(), tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture
def container(azurite: Azurite) -> str:
    """A fresh container per test (Azure's names: lowercase, digits and hyphens)."""
    name = f"gateway-{uuid.uuid4().hex[:16]}"
    azurite.create_container(name)
    return name


@pytest.fixture
async def azure_store(azurite: Azurite, container: str) -> AsyncIterator[AzureBlobStore]:
    store = AzureBlobStore(
        account_url=azurite.account_url,
        container=container,
        account_name=azurite_emulator.ACCOUNT,
        account_key=azurite_emulator.ACCOUNT_KEY,
    )
    yield store
    await store.aclose()


@dataclass(frozen=True)
class ServiceAccount:
    """A service account's JSON key, as the Google Cloud console downloads it, and its public half."""

    info: dict[str, str]
    public_pem: str

    @property
    def key_json(self) -> str:
        return json.dumps(self.info)


def make_service_account(email: str) -> ServiceAccount:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    info = {
        "type": "service_account",
        "project_id": "gateway-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": email,
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return ServiceAccount(info, public)


@pytest.fixture(scope="session")
def gcs_account() -> ServiceAccount:
    return make_service_account("gateway@gateway-test.iam.gserviceaccount.com")


@pytest.fixture(scope="session")
def gcs_server(gcs_account: ServiceAccount) -> Iterator[VerifyingGCSServer]:
    server = VerifyingGCSServer()
    server.add_service_account(gcs_account.info, gcs_account.public_pem)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: VerifyingGCSServer) -> str:
    """A fresh bucket per test (GCS names: lowercase, digits, '-', '_', '.')."""
    name = f"gateway-{uuid.uuid4().hex[:16]}"
    gcs_server.create_bucket(name)
    return name


@pytest.fixture
async def gcs_store(
    gcs_server: VerifyingGCSServer, gcs_account: ServiceAccount, gcs_bucket: str
) -> AsyncIterator[GCSBlobStore]:
    store = GCSBlobStore(
        endpoint_url=gcs_server.endpoint_url, bucket=gcs_bucket, service_account_key=gcs_account.key_json
    )
    yield store
    await store.aclose()
