"""Real `gateway` processes for the multi-process tests: started with the CLI, killed with signals.

Each process runs `python -m gateway.cli ...` (the `gateway` console script's entry point) with
a clean `GATEWAY_*` environment, its output captured in a log file that failed assertions show.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
# Generous for two shared CPU cores: a cold start imports litestar, asyncpg and uvloop.
START_TIMEOUT_S = 25.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def gateway_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any GATEWAY_* variable of the caller's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra)
    return env


class GatewayProcess:
    """One `gateway` subprocess; `port` is set for `serve`."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path, port: int | None) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=REPO,
            env=gateway_env(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a signal to the test's process group does not reach it
        )

    @property
    def base_url(self) -> str:
        assert self.port is not None, f"{self.name} serves no HTTP"
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The process's output so far (for assertion messages)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until /readyz answers 200; fail with the log if the process exits or times out."""
        async with httpx.AsyncClient(timeout=2) as client:

            async def ready() -> bool:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get(f"{self.base_url}/readyz")).status_code == 200
                return False

            try:
                await eventually(ready, timeout_s=timeout_s, what=f"{self.name} to be ready")
            except AssertionError as failed:
                raise AssertionError(f"{failed}:\n{self.log()}") from None

    def kill(self) -> None:
        """`kill -9`: no shutdown code runs, leases and connections are left behind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit status once the process has shut down."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def close(self) -> None:
        """Stop the process if it still runs (SIGTERM, SIGKILL after 15 s) and close its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


class Cluster:
    """The processes a test started; all are stopped when the test ends."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self.processes: list[GatewayProcess] = []

    def serve(self, name: str, *flags: str, **env: str) -> GatewayProcess:
        """`gateway serve --port P [flags]` on a free port."""
        port = free_port()
        return self._start(name, ["serve", "--host", "127.0.0.1", "--port", str(port), *flags], env, port)

    def worker(self, name: str, **env: str) -> GatewayProcess:
        """`gateway worker`: the job runner alone."""
        return self._start(name, ["worker"], env, None)

    def _start(self, name: str, args: list[str], env: Mapping[str, str], port: int | None) -> GatewayProcess:
        process = GatewayProcess(name, args, {**self.env, **env}, self.log_dir, port)
        self.processes.append(process)
        return process

    def run(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """A one-shot CLI command (`billing audit`, `tenants create`), run to completion."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            cwd=REPO,
            env=gateway_env(self.env),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.processes)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.close()


@contextlib.contextmanager
def cluster(env: Mapping[str, str], log_dir: Path) -> Iterator[Cluster]:
    """A `Cluster` whose processes are stopped on exit, whatever the test did."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = Cluster(env, log_dir)
    try:
        yield started
    finally:
        started.close()
