"""Running several uvicorn worker processes, each with its own SO_REUSEPORT listener (issue 5).

uvicorn's own multi-process mode binds one socket in the parent and shares
it: every worker waits on one accept queue, and the kernel wakes the most
recent waiter first, so a burst of connections often lands on one process
while the other idles (measured: 10 keep-alive clients on 2 workers gave
either about 1,000 or about 560 requests/s, run to run). On Linux each
worker here binds its own socket to the same address with SO_REUSEPORT and
the kernel spreads new connections over them by a hash of the connection
(the approach of uvicorn PR #2472 and gunicorn's ``reuse_port``). Elsewhere
uvicorn's own mode is used.

The parent process only supervises: it checks the address can be bound,
starts the workers (spawned, so nothing heavy is inherited), restarts one
that dies, and stops them all on SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

log = logging.getLogger("granttag.serve")


def reuse_port_supported() -> bool:
    """True where SO_REUSEPORT balances connections between sockets (Linux)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listener(host: str, port: int) -> socket.socket:
    """Return a listening TCP socket bound to (host, port) with SO_REUSEPORT; raises OSError."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(app: str, host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    sock = listener(host, port)
    config = uvicorn.Config(app, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[sock])


def serve_reuse_port(app: str, host: str, port: int, workers: int, **options: Any) -> None:
    """Serve ``app`` (an import string) with ``workers`` processes, each on its own SO_REUSEPORT socket.

    ``options`` go to ``uvicorn.Config``. Raises OSError when the address
    cannot be bound (checked before any worker starts).
    """
    probe = listener(host, port)  # fails here, with the OS's message, if the address is taken
    port = probe.getsockname()[1]  # a port of 0 becomes the one the OS chose, shared by all workers
    probe.close()  # a socket of the group that never accepts would be handed connections
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start(n: int) -> Any:
        proc = ctx.Process(target=_worker, args=(app, host, port, options), name=f"granttag-api-{n}", daemon=False)
        proc.start()
        return proc

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start(n) for n in range(workers)]
    print(f"granttag serve: {workers} workers on http://{host}:{port}, one SO_REUSEPORT listener each", file=sys.stderr, flush=True)
    try:
        while not stopping:
            for n, proc in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    log.warning("worker %s (pid %s) exited with %s; starting another", n, proc.pid, proc.exitcode)
                    procs[n] = start(n)
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)  # uvicorn finishes the requests in flight, then exits
        deadline = time.monotonic() + 30
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
