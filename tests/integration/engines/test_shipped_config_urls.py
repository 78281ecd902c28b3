"""Every shipped gateway.toml, as it is deployed, sends each vendor engine to the vendor's documented URLs.

The configs are read the way they reach a process: deploy/gateway.toml and the k8s base file as
they are, each k8s overlay through `kubectl kustomize` (the ConfigMap it renders). Each vendor
engine then serves every operation it is routed for, through a transport that checks the URL
against the servers and paths of openapi/vendors/<kind>.yaml before passing the call to the fake
vendor. A base URL with a path of its own (`.../v2` on top of the adapter's `/v2/jobs`) ends up
outside the documented paths and fails here, where the fakes alone (served at their root) cannot
tell.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from gateway.config import Secret, Settings, load_settings
from gateway.engines.base import EngineError
from gateway.engines.registry import build_client, build_engine
from gateway.engines.transport import EngineTransport
from tests.fakes.base import FakeVendor
from tests.fakes.samples import sample_request
from tests.fakes.spec import VendorSpec
from tests.unit.deploy.conftest import DEPLOY, OVERLAYS, render_overlay

VENDOR_KINDS = ("api2convert", "qolaba", "aithriving")
FILES = ("gateway.toml", "k8s/base/gateway.toml")


def _env_names(table: Any) -> Iterator[str]:
    if isinstance(table, dict):
        for key, value in table.items():
            if key.endswith("_env") and isinstance(value, str):
                yield value
            yield from _env_names(value)


def _load(text: str, path: Path) -> Settings:
    path.write_text(text)
    environ = dict.fromkeys(_env_names(tomllib.loads(text)), "placeholder")
    return load_settings(environ, config_path=path)


def shipped_configs(tmp: Path) -> Iterator[tuple[str, Settings]]:
    """(where it ships, its settings): the files as they are, the overlays as kustomize renders them."""
    for name in FILES:
        yield name, _load((DEPLOY / name).read_text(), tmp / name.replace("/", "_"))
    for overlay in OVERLAYS:
        objects = render_overlay(overlay)
        (config_map,) = [
            o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("gateway-config")
        ]
        yield f"k8s/overlays/{overlay}", _load(config_map["data"]["gateway.toml"], tmp / f"{overlay}.toml")


def documented(kind: str) -> tuple[list[str], list[re.Pattern[str]]]:
    """The vendor's documented servers and its paths as patterns (`{id}` matches one segment)."""
    document = VendorSpec(kind).document
    servers = [server["url"].rstrip("/") for server in document["servers"]]
    paths = [re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)) + "$") for p in document["paths"]]
    return servers, paths


def documented_rest(url: str, servers: list[str], paths: list[re.Pattern[str]]) -> str | None:
    """What follows the documented server in `url` when the rest is a documented path; else None."""
    for server in servers:
        if url.startswith(server + "/"):
            rest = url.removeprefix(server)
            if any(p.match(rest.split("?", 1)[0]) for p in paths):
                return rest
    return None


class DocumentedHosts(httpx.AsyncBaseTransport):
    """Checks each call to the vendor's own host against its document, then sends it to the fake.

    Calls to the fake itself (output downloads, whose URLs the fake hands out) pass unchanged.
    """

    def __init__(self, kind: str, fake: FakeVendor) -> None:
        self.servers, self.paths = documented(kind)
        self.fake = fake
        self.vendor_urls: list[str] = []
        self.undocumented: list[str] = []
        self._inner = EngineTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if not url.startswith(self.fake.base_url):
            self.vendor_urls.append(f"{request.method} {url}")
            rest = documented_rest(url, self.servers, self.paths)
            if rest is None:
                self.undocumented.append(f"{request.method} {url}")
                return httpx.Response(404, json={"message": "not a documented URL"})
            request.url = httpx.URL(self.fake.base_url + rest)
            request.headers["host"] = request.url.netloc.decode("ascii")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _nothing(fraction: float) -> None:
    del fraction


@pytest.fixture
def fakes(fake_api2convert: FakeVendor, fake_qolaba: FakeVendor, fake_aithriving: FakeVendor) -> dict[str, FakeVendor]:
    return {"api2convert": fake_api2convert, "qolaba": fake_qolaba, "aithriving": fake_aithriving}


async def test_every_shipped_config_sends_vendor_engines_to_documented_urls(
    fakes: dict[str, FakeVendor], tmp_path: Path
) -> None:
    checked: list[str] = []
    for where, settings in shipped_configs(tmp_path):
        for name, shipped in settings.engines.items():
            if shipped.kind not in VENDOR_KINDS:
                continue
            fake = fakes[shipped.kind]
            # Only the URL is under test: the fake's key, and polling at test speed.
            config = msgspec.structs.replace(
                shipped, api_key=Secret(fake.api_key), poll_interval_s=0.01, max_poll_interval_s=0.02, timeout_s=10.0
            )
            transport = DocumentedHosts(config.kind, fake)
            engine = build_engine(name, config, build_client(config, transport))
            routed = [op for op, names in settings.routes.items() if name in names]
            served = [op for op in routed if op in engine.capabilities.operations]
            try:
                for operation in served:
                    try:
                        result = await engine.generate(sample_request(operation, 1), _nothing)
                    except EngineError as exc:
                        where_ = f"{where}: {name} {operation}"
                        pytest.fail(f"{where_}: {exc.message}; undocumented: {transport.undocumented}")
                    assert len(result.images) == 1, (where, name, operation)
                    checked.append(f"{where}: {name} {operation}")
            finally:
                await engine.aclose()
            assert transport.undocumented == [], (where, name, transport.undocumented)
            assert transport.vendor_urls, (where, name)
    # Every shipped file was read, and each ships at least one vendor engine that was exercised.
    assert {c.split(":")[0] for c in checked} == {*FILES, *(f"k8s/overlays/{o}" for o in OVERLAYS)}


def test_a_base_url_repeating_the_version_would_be_caught() -> None:
    servers, paths = documented("api2convert")
    assert documented_rest("https://api.api2convert.com/v2/v2/jobs", servers, paths) is None
    assert documented_rest("https://api.api2convert.com/v2/jobs/0b8e", servers, paths) == "/v2/jobs/0b8e"
