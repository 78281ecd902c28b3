"""What one cross-process round trip costs on this machine, when the processes sleep and when they spin.

Every hop of a sync request is one process handing bytes to another over a socket: client to
gateway, gateway to PostgreSQL and back, gateway to engine and back, gateway to client. When the
receiving process is asleep (blocked in `recv` or `epoll_wait`), the kernel has to wake it, and when
its CPU went idle meanwhile, wake that CPU too. On a virtual machine that halts an idle vCPU at once
(Firecracker with `haltpoll.guest_halt_poll_ns=0`, as the development VM is), that is an exit to
the host and back. This measures the cost: a one-byte ping-pong between two processes, each side
either blocking in `recv` or spinning on a non-blocking one, over a Unix socket pair and over TCP on
127.0.0.1. The difference between the blocking and the spinning rows is the price of the wake-ups,
which an open-loop load pays on every hop and a closed loop of back-to-back requests partly avoids.

    .venv/bin/python bench/wakeup.py
    .venv/bin/python bench/wakeup.py --round-trips 50000
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from collections.abc import Callable

Pair = Callable[[], tuple[socket.socket, socket.socket]]


def unix_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client, server


def receive(sock: socket.socket, spin: bool) -> bytes:
    """One read; spinning, retry a non-blocking read until data is there."""
    while True:
        try:
            return sock.recv(64)
        except BlockingIOError:
            if not spin:
                raise


def echo(sock: socket.socket, spin: bool) -> None:
    """The far side: answer every byte until the peer closes."""
    sock.setblocking(not spin)
    while data := receive(sock, spin):
        sock.sendall(data)


def round_trips(pair: Pair, *, client_spins: bool, server_spins: bool, count: int) -> list[int]:
    """Nanoseconds per ping-pong, measured on the client side, after a short warm-up."""
    client, server = pair()
    pid = os.fork()
    if pid == 0:  # the echo process
        client.close()
        echo(server, server_spins)
        os._exit(0)
    server.close()
    client.setblocking(not client_spins)
    times = []
    try:
        for i in range(count + count // 10):
            start = time.perf_counter_ns()
            client.send(b"x")
            receive(client, client_spins)
            if i >= count // 10:
                times.append(time.perf_counter_ns() - start)
    finally:
        client.close()
        os.waitpid(pid, 0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--round-trips", type=int, default=20_000, help="per row (default 20000)")
    args = parser.parse_args()
    rows = [
        ("both block", False, False),
        ("client spins, echo blocks", True, False),
        ("both spin", True, True),
    ]
    print(f"{os.cpu_count()} CPUs; {args.round_trips} one-byte round trips per row, after a 10 % warm-up\n")
    print("| socket | sides | p50 µs | p90 µs | p99 µs |")
    print("|---|---|---:|---:|---:|")
    for name, pair in (("Unix", unix_pair), ("TCP 127.0.0.1", tcp_pair)):
        for sides, client_spins, server_spins in rows:
            times = round_trips(pair, client_spins=client_spins, server_spins=server_spins, count=args.round_trips)
            times.sort()
            p50 = statistics.median(times) / 1000
            p90, p99 = (times[int(len(times) * q)] / 1000 for q in (0.9, 0.99))
            print(f"| {name} | {sides} | {p50:.1f} | {p90:.1f} | {p99:.1f} |", flush=True)


if __name__ == "__main__":
    main()
