"""Engines by kind: build one from its `[engines.NAME]` table, or all of them from Settings."""

from __future__ import annotations

import importlib
import ssl
from typing import cast

import httpx

from gateway.config import ConfigError, EngineConfig, Settings, TransportKind
from gateway.engines import aithriving, api2convert, qolaba
from gateway.engines.aiohttp_transport import AiohttpEngineTransport
from gateway.engines.aithriving import AithrivingEngine
from gateway.engines.api2convert import Api2ConvertEngine
from gateway.engines.base import Capabilities, Engine
from gateway.engines.client import EngineClient
from gateway.engines.qolaba import QolabaEngine
from gateway.engines.transport import EngineTransport


def build_engine(name: str, config: EngineConfig, client: httpx.AsyncClient) -> Engine:
    """The engine of `config.kind`, owning `client` from now on (its `aclose` closes it)."""
    if config.kind == "api2convert":
        return Api2ConvertEngine(name, config, client)
    if config.kind == "qolaba":
        return QolabaEngine(name, config, client)
    if config.kind == "aithriving":
        return AithrivingEngine(name, config, client)
    # Imported lazily, by name: the diffusion client is only needed where an engine of that
    # kind is configured, and it is built separately from the vendor engines.
    diffusion = importlib.import_module("gateway.engines.diffusion")
    engine: Engine = diffusion.DiffusionEngine(name, config, client)
    return engine


def engine_transport(
    kind: TransportKind, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
) -> httpx.AsyncBaseTransport:
    """The HTTP/1.1 transport `[engines.NAME] transport` names; `ssl_context` replaces certifi's authorities.

    "own" (the default) costs half the client CPU of "aiohttp" per engine call and a twelfth of "httpx"'s;
    the measurements and the behaviours each lacks are at the top of gateway/engines/transport.py.
    """
    if kind == "aiohttp":
        return AiohttpEngineTransport(limits=limits, ssl_context=ssl_context)
    if kind == "httpx":
        verify: ssl.SSLContext | bool = ssl_context or True
        return httpx.AsyncHTTPTransport(verify=verify, limits=limits or httpx.Limits(), trust_env=False)
    return EngineTransport(limits=limits, ssl_context=ssl_context)


def build_client(config: EngineConfig, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The HTTP client of one engine: its timeouts, a pool sized to its concurrency, no env proxies."""
    limits = httpx.Limits(
        max_connections=config.max_concurrency * 2,  # job creation and polling overlap
        max_keepalive_connections=config.max_concurrency,
    )
    if transport is None:
        transport = engine_transport(config.transport, limits=limits)
    # httpx's client without its per-request merging and cookie jar (gateway/engines/client.py); it
    # takes no proxies from the environment: vendor calls carry secrets and go where the config says.
    return EngineClient(
        base_url=config.base_url,
        transport=transport,
        timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
        limits=limits,
        follow_redirects=False,
        propagate_trace=config.propagate_trace,
    )


def in_process(config: EngineConfig) -> bool:
    """A diffusion engine without `base_url` is served by the GPU service inside this process."""
    return config.kind == "diffusion" and not config.base_url


def build_engines(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> dict[str, Engine]:
    """One engine per `[engines.NAME]` that is reached over the network, each with its own client;
    `transport` replaces the network in tests. In-process diffusion engines are built by
    gateway/bootstrap.py, which owns the GPU service they share."""
    # A bad engine table (ConfigError) stops startup. The clients built so far have never
    # opened a connection, so there is nothing to close when that happens.
    return {
        name: build_engine(name, config, build_client(config, transport))
        for name, config in settings.engines.items()
        if not in_process(config)
    }


def capabilities(kind: str) -> Capabilities:
    """What engines of `kind` can serve, without building one."""
    if kind == "diffusion":
        return cast(Capabilities, importlib.import_module("gateway.engines.diffusion").CAPABILITIES)
    vendors = {
        "api2convert": api2convert.CAPABILITIES,
        "qolaba": qolaba.CAPABILITIES,
        "aithriving": aithriving.CAPABILITIES,
    }
    return vendors[kind]


def check_route_capabilities(settings: Settings) -> None:
    """Refuse (ConfigError naming the route) a route none of whose engines can do its operation."""
    for operation, names in settings.routes.items():
        if not names:
            raise ConfigError(f"routes.{operation}: empty; list the engines to try, or remove the line")
        if any(operation in capabilities(settings.engines[name].kind).operations for name in names):
            continue
        able = sorted(name for name, cfg in settings.engines.items() if operation in capabilities(cfg.kind).operations)
        fix = f"route it to one that can ({', '.join(able)})" if able else "add an engine that can"
        raise ConfigError(f"routes.{operation}: no engine listed ({', '.join(names)}) can do {operation}; {fix}")
