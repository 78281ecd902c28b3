"""What the gateway adds: the same text-to-image work sent to a fake engine directly and through the gateway.

One run starts (or is pointed at) everything on 127.0.0.1 and prints one table:

* a fake Qolaba engine in its own process. It speaks Qolaba's documented protocol (POST /getTextToImage
  with a Bearer key, the answer envelope with `output`) and answers at once with a small PNG as a data URL;
* PostgreSQL (embedded, in a temporary folder) with migrations applied and benchmark tenants;
* `gateway serve` (uvicorn, uvloop, httptools) in its own process, routing text-to-image to the fake.

Closed-loop modes run `--concurrency` clients (httpx on the gateway's lean EngineTransport, so the load
generator costs little of the CPU it shares with what it measures), each sending its next request when
the previous one returns, for `--duration` seconds after `--warmup` seconds that are not counted:

* engine: the fake engine's endpoint called directly, with the body the gateway's Qolaba engine sends;
* hot: sync text-to-image through the gateway (auth, pricing, reservation, engine call, blob write,
  settlement, job view), every client on one tenant, so every request takes the same wallet row lock;
* many: the same with the clients spread over `--tenants` tenants;
* async: submit with `"async": true` (202), then poll GET /v1/jobs/{id} until the job is finished.

The open-loop mode sends `--rate` requests per second on a fixed schedule, to the engine and then through
the gateway, and reports latency from each request's scheduled start (so a stall is not hidden by the
load generator waiting). The difference of the two is the latency the gateway adds at that rate. A line
after the table says when the slowest 1 % started: bunched in a few spans is a stall, spread out is queueing.
With a local PostgreSQL, a line per mode says what it ran on its own meanwhile (autovacuum, autoanalyze,
checkpoints) and when each last run ended, to match with those spans. After the closed-loop modes have
written tens of thousands of jobs, autovacuum catches up during the next mode; `--settle` vacuums before
each mode instead.

With `--tracing`, a second gateway process runs beside the first, with OpenTelemetry tracing on (every
request sampled, spans exported over OTLP/HTTP to a sink process on 127.0.0.1 that decodes and counts
them), and each gateway mode runs against both, alternately, `--rounds` times: the summary after the
table gives the medians, so the cost of tracing is read off one run on one machine. `--transports`
compares engine transports the same way, and `--trees` this checkout's code against other source
trees' (another commit in a `git worktree`), all on one database: a regression is read off one run
instead of two runs an hour apart on a VM whose speed drifts.

Afterwards the ledger audit (`gateway billing audit`'s checks) runs, and the jobs and charges in the
database are matched against the answers the clients received.

    .venv/bin/python bench/gateway.py                      # everything, 10 s per mode
    .venv/bin/python bench/gateway.py --modes engine,hot --duration 5
    .venv/bin/python bench/gateway.py --modes hot,rate --tracing --rounds 3   # tracing off against on
    git worktree add /tmp/base HEAD~10 && .venv/bin/python bench/gateway.py --modes many --concurrency 1 \
        --trees /tmp/base --rounds 6                                          # this checkout against HEAD~10
    .venv/bin/python bench/gateway.py --url http://127.0.0.1:8000 --key gw_... --engine-url http://...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec

ROOT = Path(__file__).resolve().parent.parent
# This file is named like the package it measures; run as a script, its own folder comes first on
# sys.path and `import gateway` would find this file. Put the repository root first instead.
if __name__ == "__main__":
    sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]
ENGINE_KEY = "bench-engine-key"
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
GATEWAY_BODY = {"prompt": PROMPT, "width": 512, "height": 512, "n": 1}
# What gateway/engines/qolaba.py sends for GATEWAY_BODY (request_body()), so mode "engine" is the same work.
ENGINE_BODY = {
    "app_id": "ap-eRSyl0imzrUrbvgdAYwDTl",
    "prompt": PROMPT,
    "batch": 1,
    "celery": True,
    "guidance_scale": 7.5,
    "width": 512,
    "height": 512,
}
ALL_MODES = ("engine", "hot", "many", "async", "rate")


# -- the fake engine ------------------------------------------------------------------------------


async def _read_body(receive: Any) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    return body


def _small_png() -> bytes:
    from PIL import Image  # noqa: PLC0415 - only the fake engine's process needs Pillow

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def fake_engine_app() -> Callable[..., Awaitable[None]]:
    """A raw ASGI app for Qolaba's submit endpoint. It answers a finished task at once (`output` filled
    with a data URL), which the gateway's engine accepts without polling or downloading. It is kept
    minimal, so that the engine's own cost is small next to what is measured."""
    image = "data:image/png;base64," + base64.b64encode(_small_png()).decode("ascii")
    counter = {"n": 0}
    paths = {"/getTextToImage", "/getImageToImage", "/getImagetoImage"}
    expected_auth = f"Bearer {ENGINE_KEY}".encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        status = 200
        answer: dict[str, Any]
        if scope["path"] not in paths or scope["method"] != "POST":
            status, answer = 404, {"error": "not found"}
        elif headers.get(b"authorization") != expected_auth:
            status, answer = 401, {"error": "unauthorized"}
        else:
            request = msgspec.json.decode(body)
            counter["n"] += 1
            answer = {
                "time_required": "0.0",
                "error": "",
                "error_data": "",
                "input": "",
                "output": [image] * int(request.get("batch", 1)),
                "app_id": request.get("app_id", ""),
                "task_id": f"task-{counter['n']}",
                "status": "SUCCESS",
            }
        payload = msgspec.json.encode(answer)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_fake_engine(port: int) -> None:
    import uvicorn  # noqa: PLC0415

    uvicorn.run(
        fake_engine_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level="warning",
        access_log=False,
    )


def otlp_sink_app() -> Callable[..., Awaitable[None]]:
    """A raw ASGI app that takes OTLP/HTTP trace exports as a collector would (decoding each), and
    answers GET /stats with how many requests and spans it got."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: PLC0415

    counts = {"requests": 0, "spans": 0, "bytes": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        payload = b""
        if scope["method"] == "POST":
            export = ExportTraceServiceRequest.FromString(body)
            counts["requests"] += 1
            counts["bytes"] += len(body)
            counts["spans"] += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        else:
            payload = msgspec.json.encode(counts)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    return app


def serve_otlp_sink(port: int) -> None:
    import uvicorn  # noqa: PLC0415

    uvicorn.run(otlp_sink_app(), host="127.0.0.1", port=port, lifespan="off", log_level="warning", access_log=False)


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout:g}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tenants:
    hot: str
    many: list[str]
    credits: int  # each tenant's starting balance, millicredits


async def create_tenants(dsn: str, many: int) -> Tenants:
    """A hot tenant and `many` others, each with plenty of credits and a key without a rate limit."""
    from gateway.auth.service import KeySpec, create_tenant, create_tenant_key  # noqa: PLC0415
    from gateway.db.migrations import apply_migrations  # noqa: PLC0415
    from gateway.db.pool import create_pool  # noqa: PLC0415

    credits = 10**12
    pool = await create_pool(dsn, min_size=1, max_size=2, statement_cache_size=100)
    keys = []
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
            for i in range(many + 1):
                async with conn.transaction():
                    tenant_id, _ = await create_tenant(
                        conn, name=f"bench-{i}", credits=credits, max_concurrent_jobs=100_000
                    )
                    key = await create_tenant_key(
                        conn,
                        tenant_id=tenant_id,
                        spec=KeySpec(name="bench", scopes=["generate", "jobs:read"], rate_limit_per_minute=10**9),
                    )
                keys.append(key.key)
    finally:
        await pool.close()
    return Tenants(hot=keys[0], many=keys[1:], credits=credits)


async def warm_wal(dsn: str, segments: int) -> int:
    """Bring a new cluster's WAL to its steady state; returns the segment files ready for reuse.

    A fresh cluster has no used WAL segment files to recycle, so whichever commit needs the next
    16 MB segment creates and zero-fills it while holding the WAL write lock: every commit waits
    (a 100-400 ms stall on this VM, about every 16 s at 200 req/s). A long-running server renames
    segments a checkpoint no longer needs into future ones instead. Switching through `segments`
    segments and then checkpointing leaves the benchmark with such recycled segments too.
    """
    import asyncpg  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_wal_warmup (at timestamptz)")
        for _ in range(segments):
            await conn.execute("INSERT INTO bench_wal_warmup VALUES (now())")
            await conn.execute("SELECT pg_switch_wal()")
        await conn.execute("DROP TABLE bench_wal_warmup")
        await conn.execute("CHECKPOINT")
        await conn.execute("CHECKPOINT")
        current = await conn.fetchval("SELECT pg_walfile_name(pg_current_wal_lsn())")
        ahead: int = await conn.fetchval(
            "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' AND name > $1", current
        )
        return ahead
    finally:
        await conn.close()


def file_create_cpu_us(folder: Path, count: int = 200) -> float:
    """Median CPU µs to create, write and rename a small file in `folder`, the filesystem blob store's
    pattern. On the development VM's ext4 this ranged from about 20 µs to over 1 ms, by folder and by
    day (inode allocation near a crowded parent), so each run states it."""
    probe = Path(tempfile.mkdtemp(prefix="create-probe-", dir=folder))
    costs = []
    try:
        for i in range(count):
            path = probe / f"blob-{i}"
            start = time.process_time()
            fd = os.open(f"{path}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, b"x" * 256)
            os.close(fd)
            os.replace(f"{path}.tmp", path)
            costs.append(time.process_time() - start)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return statistics.median(costs) * 1e6


@dataclass
class Variant:
    """One gateway process of a run: its label (empty for a single gateway), URL and a CPU meter over it.
    `--tracing`, `--transports` and `--trees` start several; each gateway mode alternates between them."""

    label: str
    url: str
    meter: CpuMeter


@dataclass
class Stack:
    """What `local_stack` started: the gateways (the first is the baseline of comparisons), the fake
    engine, the database and its tenants, and with --tracing the span sink's URL."""

    variants: list[Variant]
    engine_url: str
    dsn: str
    tenants: Tenants
    sink: str | None


@dataclass(frozen=True)
class GatewaySetup:
    """One gateway to start: its label, extra `[engines.qolaba]` lines, extra environment, source tree."""

    label: str
    engine_lines: str = ""
    env: dict[str, str] = field(default_factory=dict)
    tree: Path = ROOT


def variant_settings(args: argparse.Namespace) -> list[GatewaySetup]:
    """The gateways to start: one, or one per compared transport, tracing setting or source tree."""
    if args.transports:
        return [GatewaySetup(f"transport {t}", f'transport = "{t}"\n') for t in args.transports.split(",")]
    if args.tracing:
        return [GatewaySetup("tracing off"), GatewaySetup("tracing on", env={"OTEL_TRACES_EXPORTER": "otlp"})]
    if args.trees:
        return [GatewaySetup(tree.name, tree=tree) for tree in trees(args.trees)]
    return [GatewaySetup("")]


def round_orders(items: list[Variant], rounds: int) -> list[list[Variant]]:
    """The order of each round: each starts one item later than the last.

    On this VM whichever gateway runs first in a round measures more gateway CPU (at one client,
    0.4 ms per request more than the third of three, mean of 6 rounds of `--trees` over nearly one
    commit); a fixed order would hand that to one gateway every time."""
    return [items[i % len(items) :] + items[: i % len(items)] for i in range(rounds)]


def trees(spec: str) -> list[Path]:
    """This checkout, then each source tree of `--trees` (e.g. a `git worktree add` of another commit)."""
    others = [Path(t).resolve() for t in spec.split(",")]
    for tree in others:
        if not (tree / "gateway" / "cli.py").is_file():
            raise SystemExit(f"--trees: {tree} is not a checkout of this project (no gateway/cli.py)")
    return [ROOT, *others]


@contextlib.contextmanager
def local_stack(args: argparse.Namespace) -> Iterator[Stack]:
    """Fake engine, embedded PostgreSQL and the gateway(s), all on 127.0.0.1."""
    from gateway.db.embedded import start_embedded  # noqa: PLC0415

    args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-", dir=args.tmp_dir))
    procs: list[subprocess.Popen[bytes]] = []
    embedded = None
    blobs: Path | None = None
    try:
        engine_port = free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fake-engine", str(engine_port)]))
        embedded = start_embedded(tmp / "data")
        blobs = Path(tempfile.mkdtemp(prefix="bench-blobs-", dir=args.blob_dir)) if args.blob_dir else tmp / "blobs"
        blobs.mkdir(exist_ok=True)
        print(f"creating a small file in {blobs}: {file_create_cpu_us(blobs):.0f} µs of CPU (median)", flush=True)
        dsn = embedded.uri
        tenants = asyncio.run(create_tenants(dsn, args.tenants))
        if args.warm_wal:
            ready = asyncio.run(warm_wal(dsn, args.warm_wal))
            print(f"WAL warmed: {ready} recycled segment files ahead of the current one", flush=True)
        pg_options = [tuple(option.split("=", 1)) for option in args.pg_option]
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            # asyncpg passes a DSN's unknown query parameters to the server as session settings.
            "GATEWAY_DATABASE_URL": dsn + ("&" if "?" in dsn else "?") + urlencode(pg_options) if pg_options else dsn,
            "GATEWAY_DATA_DIR": str(tmp / "data"),
            "GATEWAY_LOG_LEVEL": "warning",
            "GATEWAY_DEMO_TENANT": "false",
            "GATEWAY_DB_POOL_MAX": str(args.db_pool),
            "GATEWAY_WORKER_CONCURRENCY": "256",
            "BENCH_ENGINE_KEY": ENGINE_KEY,
        }
        env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # tracing off, whatever the shell says
        sink = None
        settings = variant_settings(args)
        if args.tracing:
            sink_port = free_port()
            sink = f"http://127.0.0.1:{sink_port}"
            procs.append(subprocess.Popen([sys.executable, __file__, "--serve-otlp-sink", str(sink_port)]))
            wait_http(f"{sink}/stats", proc=procs[-1])
        wait_http(f"{engine_url}/", proc=procs[0])
        postmaster = int((embedded.pgdata / "postmaster.pid").read_text().split()[0])
        variants = []
        for i, setup in enumerate(settings):
            label, engine_lines, extra_env, tree = setup.label, setup.engine_lines, setup.env, setup.tree
            config = tmp / f"gateway-{i}.toml"
            config.write_text(
                f"""
[engines.qolaba]
kind = "qolaba"
base_url = "{engine_url}"
api_key_env = "BENCH_ENGINE_KEY"
max_concurrency = 4096
{engine_lines}
[routes]
text-to-image = ["qolaba"]

[storage]
path = "{blobs}"
"""
            )
            if extra_env and sink:
                # Every request sampled, spans exported over OTLP/HTTP to the sink.
                otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_TRACES_SAMPLER": "always_on"}
                extra_env = {**extra_env, **otel, "OTEL_SERVICE_NAME": "bench-gateway"}
            port = free_port()
            serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers)]
            # `-m` imports the package from the working folder: each gateway runs its own tree's code.
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *serve],
                env={**env, "PYTHONPATH": str(tree), "GATEWAY_CONFIG": str(config), **extra_env},
                cwd=tree,
            )
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
            print(f"gateway {label or ''} pid {proc.pid} on :{port}, fake engine pid {procs[0].pid}", flush=True)
            meter = CpuMeter(gateway=proc.pid, engine=procs[0].pid, postmaster=postmaster)
            variants.append(Variant(label, f"http://127.0.0.1:{port}", meter))
        yield Stack(variants, engine_url, dsn, tenants, sink)
    finally:
        for proc in reversed(procs):
            stop(proc)
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if blobs is not None:
            shutil.rmtree(blobs, ignore_errors=True)


# -- CPU accounting -------------------------------------------------------------------------------


def _ticks(pid: int, children: bool = False) -> int:
    """utime + stime of a process (plus its reaped children's), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0
    # fields[0] is field 3 (state) of proc(5): utime is field 14, stime 15, cutime 16, cstime 17.
    used = int(fields[11]) + int(fields[12])
    return used + (int(fields[13]) + int(fields[14]) if children else 0)


def _children(ppid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == ppid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _tree_ticks(pid: int) -> int:
    """`_ticks` of a process, its live children and its reaped ones (PostgreSQL's backends, serve's workers)."""
    return _ticks(pid, children=True) + sum(map(_ticks, _children(pid)))


@dataclass
class CpuMeter:
    """CPU seconds used by the gateway, PostgreSQL (postmaster and backends), the fake engine and this
    load generator. On a shared machine, CPU per request is steadier than latency."""

    gateway: int | None = None
    engine: int | None = None
    postmaster: int | None = None

    def sample(self) -> dict[str, float]:
        hz = os.sysconf("SC_CLK_TCK")
        out = {"client": time.process_time()}
        if self.gateway:  # with --workers, the worker processes are its children
            out["gateway"] = _tree_ticks(self.gateway) / hz
        if self.engine:
            out["engine"] = _ticks(self.engine) / hz
        if self.postmaster:
            out["postgres"] = _tree_ticks(self.postmaster) / hz
        return out


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: Counter[int] = field(default_factory=Counter)
    elapsed: float = 0.0
    offered: float | None = None
    succeeded: int = 0  # warm-up included: every one of these was billed
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used while measuring, by process
    # Open loop: (scheduled start from the end of the warm-up, latency) of each counted success, in
    # seconds, to tell a stall (slow requests bunched in time) from steady queueing.
    timeline: list[tuple[float, float]] = field(default_factory=list)
    counting_since: float = 0.0  # wall-clock time (time.time()) the counted part began
    background: str = ""  # what PostgreSQL did on its own meanwhile (see `Background`)

    def stalls(self, slowest: float = 0.01, window: float = 0.1) -> str:
        """Where the slowest `slowest` share of requests started: how many `window`-long spans hold them."""
        if not self.timeline:
            return ""
        worst = sorted(self.timeline, key=lambda t: t[1])[-max(1, round(len(self.timeline) * slowest)) :]
        spans = sorted({int(at / window) for at, _ in worst})
        where = ", ".join(f"{span * window:.1f}s" for span in spans[:12])
        return (
            f"{self.name}: the slowest {len(worst)} requests ({min(t[1] for t in worst) * 1000:.1f} ms and over) "
            f"started in {len(spans)} spans of {window * 1000:.0f} ms: {where}{' ...' if len(spans) > 12 else ''}"
        )

    def cpu_ms(self, who: str) -> float:
        """CPU milliseconds per counted request spent by `who`."""
        return 1000 * self.cpu.get(who, float("nan")) / (sum(self.statuses.values()) or 1)

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        data = sorted(self.latencies)
        return data[min(len(data) - 1, round(q * (len(data) - 1)))] * 1000


Call = Callable[[httpx.AsyncClient, int], Awaitable[int]]


def engine_call(engine_url: str) -> Call:
    url = f"{engine_url}/getTextToImage"
    headers = {"Authorization": f"Bearer {ENGINE_KEY}", "Content-Type": "application/json"}
    body = msgspec.json.encode(ENGINE_BODY)

    async def call(client: httpx.AsyncClient, worker: int) -> int:
        response = await client.post(url, content=body, headers=headers)
        # The gateway decodes the envelope; do the same so both sides do comparable client work.
        msgspec.json.decode(response.content)
        return response.status_code

    return call


def sync_call(gateway_url: str, keys: list[str]) -> Call:
    url = f"{gateway_url}/v1/text-to-image"
    body = msgspec.json.encode(GATEWAY_BODY)
    headers = [{"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for key in keys]

    async def call(client: httpx.AsyncClient, worker: int) -> int:
        response = await client.post(url, content=body, headers=headers[worker % len(headers)])
        if response.status_code == 200 and msgspec.json.decode(response.content)["state"] != "succeeded":
            return 599
        return response.status_code

    return call


def async_call(gateway_url: str, keys: list[str], poll_s: float) -> Call:
    url = f"{gateway_url}/v1/text-to-image"
    body = msgspec.json.encode({**GATEWAY_BODY, "async": True})
    headers = [{"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for key in keys]

    async def call(client: httpx.AsyncClient, worker: int) -> int:
        h = headers[worker % len(headers)]
        response = await client.post(url, content=body, headers=h)
        if response.status_code != 202:
            return response.status_code
        location = gateway_url + response.headers["location"]
        while True:
            await asyncio.sleep(poll_s)
            poll = await client.get(location, headers=h)
            if poll.status_code != 200:
                return poll.status_code
            state = msgspec.json.decode(poll.content)["state"]
            if state == "succeeded":
                return 200
            if state not in ("queued", "running"):
                return 599

    return call


def client(connections: int) -> httpx.AsyncClient:
    """The load generator's client, on the gateway's own lean transport (gateway/engines/transport.py):
    with httpx's default one the clients cost more CPU per request (~1.3 ms) than the gateway's
    own HTTP handling, and they share the two cores with what is measured."""
    from gateway.engines.transport import EngineTransport  # noqa: PLC0415

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=60.0, transport=EngineTransport(limits=limits))


async def measure_cpu(meter: CpuMeter, result: Result, warmup: float) -> Callable[[], None]:
    """Start measuring after `warmup`; the returned function stops and stores the CPU used."""
    await asyncio.sleep(warmup)
    before = meter.sample()

    def done() -> None:
        after = meter.sample()
        result.cpu = {k: after[k] - before[k] for k in after}

    return done


async def closed_loop(
    name: str, call: Call, concurrency: int, duration: float, warmup: float, meter: CpuMeter
) -> Result:
    """`concurrency` workers, each sending its next request when the previous one returns."""
    result = Result(name)
    async with client(concurrency) as http:
        start = time.perf_counter()
        counting_from = start + warmup
        result.counting_since = time.time() + warmup
        end = counting_from + duration
        cpu = asyncio.create_task(measure_cpu(meter, result, warmup))

        async def worker(i: int) -> None:
            while (t0 := time.perf_counter()) < end:
                try:
                    status = await call(http, i)
                except httpx.HTTPError:
                    status = 0
                t1 = time.perf_counter()
                result.succeeded += status in (200, 202)
                if t0 >= counting_from:
                    result.statuses[status] += 1
                    if status in (200, 202):
                        result.latencies.append(t1 - t0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        result.elapsed = time.perf_counter() - counting_from
        (await cpu)()
    return result


async def open_loop(
    name: str, call: Call, rate: float, duration: float, warmup: float, workers: int, meter: CpuMeter
) -> Result:
    """Requests started on a fixed schedule of `rate` per second; latency counts from the scheduled start."""
    result = Result(name, offered=rate)
    async with client(1024) as http:
        start = time.perf_counter()
        counting_from = start + warmup
        result.counting_since = time.time() + warmup
        cpu = asyncio.create_task(measure_cpu(meter, result, warmup))
        total = int((warmup + duration) * rate)
        tasks = []

        async def one(i: int, scheduled: float) -> None:
            try:
                status = await call(http, i % workers)
            except httpx.HTTPError:
                status = 0  # overloaded: the connection was refused or reset
            done = time.perf_counter()
            result.succeeded += status in (200, 202)
            if scheduled >= counting_from:
                result.statuses[status] += 1
                if status in (200, 202):
                    result.latencies.append(done - scheduled)
                    result.timeline.append((scheduled - counting_from, done - scheduled))

        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
        result.elapsed = time.perf_counter() - counting_from
        (await cpu)()
    return result


@dataclass
class Background:
    """PostgreSQL's own work during a mode: autovacuum and autoanalyze runs and checkpoints, with the
    time each last one ended, so that a stall in the timeline can be matched with what ran then."""

    dsn: str
    _before: dict[str, Any] = field(default_factory=dict)

    async def _sample(self) -> dict[str, Any]:
        import asyncpg  # noqa: PLC0415

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            tables = await conn.fetch(
                """SELECT relname, autovacuum_count, autoanalyze_count, last_autovacuum, last_autoanalyze
                   FROM pg_stat_user_tables"""
            )
            checkpoint = await conn.fetchrow(
                """SELECT c.num_done, c.write_time, c.sync_time, (pg_control_checkpoint()).checkpoint_time AS at
                   FROM pg_stat_checkpointer c"""
            )
        finally:
            await conn.close()
        return {"tables": {t["relname"]: t for t in tables}, "checkpoint": checkpoint}

    async def settle(self) -> None:
        """Vacuum and analyze every table now, so that the catch-up autovacuum of what an earlier mode
        wrote does not run during the next one."""
        import asyncpg  # noqa: PLC0415

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("VACUUM (ANALYZE)")
        finally:
            await conn.close()

    async def start(self) -> None:
        self._before = await self._sample()

    async def describe(self, result: Result) -> None:
        """Store in `result` what ran since `start`, each with when its last run ended (seconds from the
        end of the warm-up; negative: during the warm-up)."""
        await asyncio.sleep(1.0)  # statistics reach the shared counters about once a second
        after = await self._sample()
        runs = []
        for name, row in after["tables"].items():
            old = self._before["tables"].get(name)
            for kind in ("autovacuum", "autoanalyze"):
                count = row[f"{kind}_count"] - (old[f"{kind}_count"] if old else 0)
                if count:
                    ended = row[f"last_{kind}"].timestamp() - result.counting_since
                    runs.append(f"{kind} of {name} x{count} (last ended at {ended:.1f}s)")
        done = after["checkpoint"]["num_done"] - self._before["checkpoint"]["num_done"]
        if done:
            ended = after["checkpoint"]["at"].timestamp() - result.counting_since
            spent = (after["checkpoint"]["write_time"] + after["checkpoint"]["sync_time"]) - (
                self._before["checkpoint"]["write_time"] + self._before["checkpoint"]["sync_time"]
            )
            runs.append(f"{done} checkpoint(s) (last at {ended:.1f}s, {spent:.0f} ms writing and syncing)")
        result.background = f"{result.name}: PostgreSQL meanwhile: {', '.join(runs) or 'no autovacuum, no checkpoint'}"


# -- report ---------------------------------------------------------------------------------------


def table(results: list[Result], baseline: dict[str, Result]) -> str:
    """One row per mode; +p50/+p99 against the engine called directly the same way; CPU ms per request."""
    cols = [
        ("mode", 50),
        ("req/s", 7),
        ("p50 ms", 7),
        ("p90 ms", 7),
        ("p99 ms", 7),
        ("+p50 ms", 7),
        ("+p99 ms", 7),
        ("errors", 6),
        ("CPU ms/req: gateway", 19),
        ("postgres", 8),
        ("engine", 6),
        ("client", 6),
    ]
    lines = ["| " + " | ".join(f"{name:>{w}}" if i else f"{name:<{w}}" for i, (name, w) in enumerate(cols)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for _, w in cols) + "|")
    for r in results:
        base = baseline.get(r.name)
        errors = sum(n for s, n in r.statuses.items() if s not in (200, 202))
        values = [
            f"{r.rps():.1f}",
            f"{r.pct(0.5):.2f}",
            f"{r.pct(0.9):.2f}",
            f"{r.pct(0.99):.2f}",
            f"{r.pct(0.5) - base.pct(0.5):.2f}" if base else "",
            f"{r.pct(0.99) - base.pct(0.99):.2f}" if base else "",
            str(errors),
            *(f"{r.cpu_ms(who):.2f}" if who in r.cpu else "" for who in ("gateway", "postgres", "engine", "client")),
        ]
        cells = [f"{r.name:<{cols[0][1]}}"] + [f"{v:>{w}}" for v, (_, w) in zip(values, cols[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def account(dsn: str, tenants: Tenants, answered: int) -> bool:
    """The ledger audit, then every succeeded answer matched with a succeeded, charged job."""
    import asyncpg  # noqa: PLC0415

    from gateway.db.audit import CHECKS, run_audit  # noqa: PLC0415

    conn = await asyncpg.connect(dsn)
    try:
        problems = await run_audit(conn)
        row = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                      count(*) FILTER (WHERE state IN ('queued', 'running')) AS unfinished,
                      count(*) FILTER (WHERE state IN ('failed', 'canceled')) AS failed,
                      coalesce(sum(charged), 0) AS charged
               FROM jobs"""
        )
        assert row is not None
        charges = await conn.fetchval("SELECT count(*) FROM ledger_entries WHERE kind = 'charge'")
        spent = await conn.fetchval("SELECT coalesce(sum($1::bigint - balance), 0) FROM wallets", tenants.credits)
    finally:
        await conn.close()
    print("\nLedger audit (gateway billing audit):")
    for name in CHECKS:
        print(f"  {'FAIL' if name in problems else 'ok  '}  {name}")
    print(
        f"Jobs: {row['succeeded']} succeeded, {row['failed']} failed, {row['unfinished']} unfinished;"
        f" {charges} charge entries; {spent / 1000:.3f} credits spent, {row['charged'] / 1000:.3f} charged on jobs."
    )
    print(f"Successful answers received by the clients (warm-up included): {answered}")
    accounted = (
        not problems and row["unfinished"] == 0 and row["succeeded"] == charges == answered and spent == row["charged"]
    )
    print("Every request accounted for: " + ("yes" if accounted else "NO"))
    return accounted


async def run_modes(
    args: argparse.Namespace,
    variants: list[Variant],
    engine_url: str | None,
    hot: str,
    many: list[str],
    dsn: str | None = None,
) -> tuple[list[Result], dict[str, Result], int]:
    gateway_url, meter = variants[0].url, variants[0].meter
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: list[Result] = []
    baseline: dict[str, Result] = {}
    answered = 0
    c, d, w = args.concurrency, args.duration, args.warmup
    background = Background(dsn) if dsn else None

    async def measured(run: Awaitable[Result]) -> Result:
        if background:
            if args.settle:
                await background.settle()
            await background.start()
        r = await run
        if background:
            await background.describe(r)
        results.append(r)
        return r

    async def closed(name: str, call: Call, billed: bool = True, on: CpuMeter = meter) -> Result:
        nonlocal answered
        print(f"running {name} ...", flush=True)
        r = await measured(closed_loop(name, call, c, d, w, on))
        if billed:
            answered += r.succeeded
        return r

    async def gateways(name: str, run: Callable[[str, CpuMeter, str], Awaitable[Result]]) -> list[Result]:
        """`run(url, meter, name)` against the gateway; with several, against each in turn, `--rounds` times.

        The order rotates from round to round (`round_orders`)."""
        if len(variants) == 1:
            return [await run(gateway_url, meter, name)]
        return [
            await run(v.url, v.meter, f"{name} [{v.label}]")
            for order in round_orders(variants, args.rounds)
            for v in order
        ]

    engine: Result | None = None
    if "engine" in modes and engine_url:
        engine = await closed(f"engine direct, {c} clients", engine_call(engine_url), billed=False)
    closed_modes = [("hot", f"gateway sync, 1 tenant, {c} clients", [hot])]
    if many:
        closed_modes.append(("many", f"gateway sync, {len(many)} tenants, {c} clients", many))
    for mode, name, keys in closed_modes:
        if mode not in modes:
            continue

        async def sync(url: str, on: CpuMeter, label: str, keys: list[str] = keys) -> Result:
            return await closed(label, sync_call(url, keys), on=on)

        for r in await gateways(name, sync):
            if engine:
                baseline[r.name] = engine
    if "async" in modes:
        r = await closed(
            f"gateway async submit + poll, {c} clients", async_call(gateway_url, many or [hot], args.poll_interval)
        )
        if engine:
            baseline[r.name] = engine
    for rate in rates(args.rate) if "rate" in modes else []:
        rate_engine = None
        if engine_url:
            print(f"running engine at {rate:g} req/s ...", flush=True)
            rate_engine = await measured(
                open_loop(f"engine direct at {rate:g} req/s", engine_call(engine_url), rate, d, w, c, meter)
            )

        async def at_rate(url: str, on: CpuMeter, name: str, rate: float = rate) -> Result:
            nonlocal answered
            print(f"running {name} ...", flush=True)
            r = await measured(open_loop(name, sync_call(url, many or [hot]), rate, d, w, c, on))
            answered += r.succeeded
            return r

        for r in await gateways(f"gateway sync at {rate:g} req/s", at_rate):
            if rate_engine:
                baseline[r.name] = rate_engine
    return results, baseline, answered


def rates(option: str) -> list[float]:
    """`--rate`: one offered rate, or several, comma-separated."""
    return [float(rate) for rate in option.split(",")]


def latency_chart(results: list[Result], path: Path) -> None:
    """p50 and p99 against the offered rate, the engine called directly and through the gateway (SVG)."""
    from bench.svg import Series, line_chart  # noqa: PLC0415

    def points(prefix: str, q: float) -> list[tuple[float, float]]:
        return sorted((r.offered, r.pct(q)) for r in results if r.offered and r.name.startswith(prefix) and r.latencies)

    series = [
        Series("gateway p99", points("gateway", 0.99), "#d62728", dashed=True),
        Series("gateway p50", points("gateway", 0.5), "#d62728"),
        Series("engine direct p99", points("engine", 0.99), "#1f77b4", dashed=True),
        Series("engine direct p50", points("engine", 0.5), "#1f77b4"),
    ]
    title = "Sync text-to-image latency against offered load (bench/gateway.py --modes engine,rate)"
    path.write_text(line_chart(title, "offered requests/s (open loop)", "latency ms (log)", series, log_y=True))
    print(f"chart written to {path}")


def variants_summary(results: list[Result], labels: list[str], sink: str | None) -> str:
    """Per mode run against several gateways: the medians over the rounds, each against the first's."""
    lines = ["", f"{' against '.join(labels)} (medians over the rounds; each round began one gateway later):"]
    modes = sorted({r.name.rpartition(" [")[0] for r in results if r.name.endswith("]")})
    for mode in modes:
        runs = {label: [r for r in results if r.name == f"{mode} [{label}]"] for label in labels}
        p50 = {k: statistics.median(r.pct(0.5) for r in v) for k, v in runs.items()}
        p99 = {k: statistics.median(r.pct(0.99) for r in v) for k, v in runs.items()}
        cpu = {k: statistics.median(r.cpu_ms("gateway") for r in v) for k, v in runs.items()}
        rps = {k: statistics.median(r.rps() for r in v) for k, v in runs.items()}
        base = labels[0]
        lines.append(f"  {mode} ({len(runs[base])} rounds):")
        for label in labels:
            lines.append(
                f"    {label:<20} p50 {p50[label]:6.2f} ms ({p50[label] - p50[base]:+.2f}), "
                f"p99 {p99[label]:6.2f} ms ({p99[label] - p99[base]:+.2f}), "
                f"gateway CPU {cpu[label]:.3f} ms/request ({(cpu[label] / cpu[base] - 1) * 100:+.1f} %), "
                f"{rps[label]:.0f} req/s"
            )
    if sink:
        stats = msgspec.json.decode(httpx.get(f"{sink}/stats").content)
        received = f"{stats['spans']} spans in {stats['requests']} OTLP requests ({stats['bytes'] / 1e6:.1f} MB)"
        lines.append(f"  the span sink received {received}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated, of {', '.join(ALL_MODES)}")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in the closed-loop modes")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per mode")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per mode before measuring")
    parser.add_argument(
        "--rate", default="200", help="requests/s in the open-loop mode; several, comma-separated, one after another"
    )
    parser.add_argument("--chart", type=Path, help="write an SVG of latency against the offered --rate values here")
    parser.add_argument("--tenants", type=int, default=32, help="tenants in the many-tenant modes")
    parser.add_argument("--poll-interval", type=float, default=0.005, help="seconds between job polls (async)")
    parser.add_argument("--db-pool", type=int, default=20, help="the gateway's database pool size (per worker)")
    parser.add_argument("--workers", type=int, default=1, help="`gateway serve --workers`: processes serving the API")
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=ROOT / ".bench",
        help="where PostgreSQL's data and the blobs go (default: .bench/ in the repository). The run prints what "
        "creating a file there costs: on the development VM's disk it ranged from 20 µs to over 1 ms of CPU by "
        "folder and by day, so pick a folder where it is small (a new top-level folder was)",
    )
    parser.add_argument(
        "--blob-dir",
        type=Path,
        help="where the gateway writes image blobs instead of the data folder, e.g. /dev/shm to take the disk's "
        "file creation out of the comparison (PostgreSQL stays in --tmp-dir)",
    )
    parser.add_argument(
        "--warm-wal",
        type=int,
        default=32,
        metavar="SEGMENTS",
        help="WAL segments to cycle through before measuring, so commits reuse recycled segment files as on a "
        "long-running server instead of creating new ones (0: measure a fresh cluster)",
    )
    parser.add_argument(
        "--pg-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a PostgreSQL setting for the gateway's sessions (e.g. synchronous_commit=off); repeatable",
    )
    parser.add_argument(
        "--settle",
        action="store_true",
        help="VACUUM (ANALYZE) the database before each mode, so that autovacuum catching up on what the "
        "modes before wrote (tens of thousands of jobs at once) does not run during it; each mode's line "
        "after the table says what PostgreSQL ran on its own meanwhile",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also start a gateway with tracing on (100 %% sampled, OTLP to a local sink) and run each gateway "
        "mode against both, alternately",
    )
    parser.add_argument(
        "--transports",
        help="comma-separated engine transports (own, aiohttp, httpx: `[engines.NAME] transport`): start a gateway "
        "with each and run each gateway mode against them in turn",
    )
    parser.add_argument(
        "--trees",
        help="comma-separated source trees of this project (e.g. `git worktree add /tmp/base HEAD~5`): start a "
        "gateway from this checkout and one from each, on one database, and run each gateway mode against them in turn",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="with --tracing, --transports or --trees: runs per gateway"
    )
    parser.add_argument("--url", help="a running gateway instead of starting one (needs --key)")
    parser.add_argument("--key", action="append", help="tenant key(s) for --url; the first is the hot tenant")
    parser.add_argument("--engine-url", help="with --url: the fake engine the gateway routes to, for the baseline")
    parser.add_argument("--serve-fake-engine", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-otlp-sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if sum(map(bool, (args.tracing, args.transports, args.trees))) > 1:
        parser.error("--tracing, --transports and --trees each compare gateways: one at a time")
    if args.serve_fake_engine:
        serve_fake_engine(args.serve_fake_engine)
        return 0
    if args.serve_otlp_sink:
        serve_otlp_sink(args.serve_otlp_sink)
        return 0

    import uvloop  # noqa: PLC0415

    # Importing the embedded server's package sets the root logger to INFO; a log line per request
    # would make the load generator, not the gateway, the thing measured.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if args.url:
        if not args.key:
            parser.error("--url needs --key")
        only = [Variant("", args.url, CpuMeter())]
        results, baseline, _ = uvloop.run(run_modes(args, only, args.engine_url, args.key[0], args.key[1:]))
        print()
        print(table(results, baseline))
        print(*(r.stalls() for r in results if r.timeline), sep="\n")
        return 0
    with local_stack(args) as stack:
        tenants = stack.tenants
        results, baseline, answered = uvloop.run(
            run_modes(args, stack.variants, stack.engine_url, tenants.hot, tenants.many, stack.dsn)
        )
        time.sleep(0.5)  # let the last settlements commit (and the traced gateway export its last spans)
        print()
        print(table(results, baseline))
        if len(stack.variants) > 1:
            print(variants_summary(results, [v.label for v in stack.variants], stack.sink))
        print(*(r.stalls() for r in results if r.timeline), sep="\n")
        print(*(r.background for r in results), sep="\n")
        if args.chart:
            latency_chart(results, args.chart)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
        ok = uvloop.run(account(stack.dsn, tenants, answered))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
