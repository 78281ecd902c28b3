"""Azurite, Microsoft's Azure Storage emulator (npm), for the Azure store's tests.

Azurite checks SharedKey signatures and service SAS tokens as Azure does, with the emulator's
well-known account. obstore cannot create a container, so `create_container` does it here with one
SharedKey-signed Create Container request (Azure's REST API, signed by hand: a few lines, no SDK).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import subprocess
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import httpx

from tests.npm import npm_tool

AZURITE = "azurite@3.35.0"
# The emulator's documented development account: not a secret.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_API_VERSION = "2021-08-06"


def install() -> Path:
    """Azurite's blob service command, npm-installed once into the user's cache folder."""
    return npm_tool(AZURITE, "azurite-blob")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Azurite:
    """A running Azurite blob service on 127.0.0.1; `account_url` is what `endpoint_url` takes."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @classmethod
    def start(cls, command: Path, location: Path) -> Azurite:
        port = _free_port()
        log = location / "azurite.log"
        with log.open("wb") as errors:
            process = subprocess.Popen(
                [
                    str(command),
                    *("--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(location)),
                    *("--silent", "--skipApiVersionCheck", "--loose"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"azurite exited: {log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return cls(process, port)
            except OSError:
                time.sleep(0.05)  # polling for the listening socket, not ordering anything
        process.kill()
        raise RuntimeError("azurite did not listen within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def create_container(self, name: str) -> None:
        """Create Container, signed with the account key (Azure's SharedKey scheme for the Blob service)."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": _API_VERSION}
        canonical_headers = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        # Verb, then 11 standard headers (all empty here, Content-Length 0 included), then ours.
        # Azurite's path-style URL has the account in its path, so the resource names it twice.
        resource = f"/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        to_sign = "PUT\n" + "\n" * 11 + canonical_headers + resource
        digest = hmac.new(base64.b64decode(ACCOUNT_KEY), to_sign.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {ACCOUNT}:{base64.b64encode(digest).decode()}"
        response = httpx.put(f"{self.account_url}/{name}", params={"restype": "container"}, headers=headers)
        assert response.status_code == 201, response.text
