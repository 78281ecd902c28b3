"""build_engine / build_engines: kinds, clients, and configuration errors."""

from __future__ import annotations

import httpx
import pytest

from gateway.config import ConfigError, EngineConfig, Settings
from gateway.engines.aithriving import AithrivingEngine
from gateway.engines.api2convert import Api2ConvertEngine
from gateway.engines.qolaba import QolabaEngine
from gateway.engines.registry import build_client, build_engine, build_engines


async def test_build_engines_makes_one_engine_per_table_with_its_own_client() -> None:
    settings = Settings(
        engines={
            "a2c": EngineConfig(kind="api2convert", base_url="http://a2c.test"),
            "q": EngineConfig(kind="qolaba", base_url="http://q.test", options={"inference_type": "a100"}),
            "ai": EngineConfig(kind="aithriving", base_url="http://ai.test"),
        }
    )
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(500)

    engines = build_engines(settings, transport=httpx.MockTransport(handler))
    assert isinstance(engines["a2c"], Api2ConvertEngine)
    assert isinstance(engines["q"], QolabaEngine)
    assert isinstance(engines["ai"], AithrivingEngine)
    for engine in engines.values():
        await engine.aclose()


def test_client_takes_the_engine_timeouts_and_limits() -> None:
    client = build_client(EngineConfig(kind="qolaba", request_timeout_s=7, connect_timeout_s=2, max_concurrency=3))
    assert client.timeout == httpx.Timeout(7, connect=2)
    assert client.trust_env is False


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(kind="api2convert", options={"colour": 1}),
        EngineConfig(kind="qolaba", options={"inference_type": "t4"}),
        EngineConfig(kind="aithriving", options={"header": "x"}),
    ],
)
def test_unknown_or_invalid_engine_options_stop_startup(config: EngineConfig) -> None:
    with pytest.raises(ConfigError, match=r"engines\.bad\.options"):
        build_engine("bad", config, httpx.AsyncClient())


async def test_diffusion_kind_is_built_by_the_diffusion_module() -> None:
    config = EngineConfig(kind="diffusion", base_url="http://gpu.test")
    engine = build_engine("local", config, httpx.AsyncClient())
    assert engine.kind == "diffusion"
    assert engine.name == "local"
    await engine.aclose()
