"""The diffusion engine, against the real GPU service on the demo model, passes the engine contract."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from gateway.domain.generation import OPERATIONS, EngineRequest, Operation
from gateway.engines.diffusion import DiffusionEngine
from gateway.engines.registry import build_client
from gateway.gpu.pipelines import LoadedModel
from tests.fakes.samples import engine_config, sample_request
from tests.integration.engines.contract import CHECKS, Subject
from tests.integration.gpu.conftest import SECRET
from tests.integration.gpu.faulty_service import FaultyGpuService

SEED = 42


def tiny_request(operation: Operation, n: int) -> EngineRequest:
    # The vendors' sample, at a size and step count the CPU runs in a blink.
    return sample_request(operation, n, urls=False, width=64, height=64, steps=2, seed=SEED)


@pytest.fixture(scope="module")
def gpu_server(demo_model: LoadedModel) -> Iterator[FaultyGpuService]:
    server = FaultyGpuService(demo_model, first_seed=SEED)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=OPERATIONS)
async def subject(request: pytest.FixtureRequest, gpu_server: FaultyGpuService) -> AsyncIterator[Subject]:
    gpu_server.reset()
    # A real (tiny) model runs on the CPU here: on a loaded 2-core runner a step can take longer
    # than the vendor fakes' 0.4 s between bytes. Between bytes stays under the 5 s hang check.
    config = engine_config("diffusion", gpu_server.base_url, SECRET, request_timeout_s=3.0, timeout_s=10.0)
    engine = DiffusionEngine("diffusion-test", config, build_client(config))
    yield Subject(
        engine=engine, control=gpu_server, make_request=tiny_request, operation=request.param, synchronous=True
    )
    await engine.aclose()
    gpu_server.reset()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__.removeprefix("check_") for c in CHECKS])
async def test_engine_contract(subject: Subject, check: Callable[[Subject], Awaitable[None]]) -> None:
    await check(subject)
