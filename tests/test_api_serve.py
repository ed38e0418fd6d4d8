"""`granttag serve`: refusing to start without keys, and a real uvicorn server under load on loopback (issue 5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.test_api import ADMIN, CLASSIFY

REPO = Path(__file__).resolve().parent.parent
#: Clients and seconds of the load test (issue 5: 200 concurrent clients for 30 s, zero errors).
LOAD_CLIENTS = 200
LOAD_SECONDS = float(os.environ.get("GRANTTAG_LOAD_SECONDS", "30"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no API keys configured"),
        ({"GRANTTAG_API_KEYS": "tooshort:admin"}, "at least 16"),
        ({"GRANTTAG_API_KEYS": f"{ADMIN}:superuser"}, "unknown role 'superuser'"),
        ({"GRANTTAG_API_KEY_FILE": "/nonexistent/granttag-keys"}, "cannot read the API key file"),
        ({"GRANTTAG_API_PORT": "http"}, "bad settings"),
    ],
)
def test_serve_bad_configuration_refuses_to_start(env: dict[str, str], message: str) -> None:
    from granttag.cli import main

    clean = {k: None for k in os.environ if k.startswith("GRANTTAG_API")}
    result = CliRunner().invoke(main, ["serve"], env={**clean, **env})
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_serve_listed_in_help() -> None:
    from granttag.cli import main

    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--no-auth" in result.output and "--workers" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`granttag serve` with two uvicorn workers on a loopback port; yields its base URL."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GRANTTAG_API") and k != "PROMETHEUS_MULTIPROC_DIR"},
        "GRANTTAG_API_KEYS": f"{ADMIN}:admin,{CLASSIFY}:classify",
        "GRANTTAG_MODELS_DIR": str(model_root),
        "GRANTTAG_DATA_DIR": str(tmp_path_factory.mktemp("serve-data")),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "granttag.cli", "serve", "--port", str(port), "--workers", "2", "--no-queue", "--log-level", "warning"],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = 0
        for _ in range(1200):  # both workers load the model; bounded so a broken server fails the test
            if proc.poll() is not None:
                break
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    ready += 1
                    if ready >= 10:  # several answers in a row: both processes are likely up
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        if proc.poll() is not None or ready < 10:
            pytest.fail(f"granttag serve did not become ready:\n{log.read_text(errors='replace')[-3000:]}")
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _payloads() -> list[dict[str, str]]:
    """The project's own corpus texts (labels/corpus), so the test needs no outside data."""
    out = []
    for path in sorted((REPO / "labels" / "corpus").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines()[:40]:
            rec = json.loads(line)
            out.append({"title": rec.get("title") or "", "abstract": rec.get("abstract") or ""})
    return out


async def _load(base: str, clients: int, seconds: float, payloads: list[dict[str, str]]) -> dict[str, Any]:
    import httpx

    counts: dict[str, Any] = {"ok": 0, "errors": 0, "examples": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {CLASSIFY}"}
    deadline = time.monotonic() + seconds

    async def client(n: int, http: httpx.AsyncClient) -> None:
        i = n
        while time.monotonic() < deadline:
            try:
                r = await http.post(f"{base}/v1/classify", json=payloads[i % len(payloads)], headers=headers)
                ok = r.status_code == 200 and "pillars" in r.json()
                if not ok and len(counts["examples"]) < 5:
                    counts["examples"].append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                if len(counts["examples"]) < 5:
                    counts["examples"].append(repr(exc))
            counts["ok" if ok else "errors"] += 1
            i += clients

    # The timeout bounds one request, which waits behind up to 200 others on 2 cores.
    async with httpx.AsyncClient(limits=limits, timeout=300) as http:
        await asyncio.gather(*(client(n, http) for n in range(clients)))
    return counts


def test_serve_load_200_clients_no_errors(server: str) -> None:
    import httpx

    counts = asyncio.run(_load(server, LOAD_CLIENTS, LOAD_SECONDS, _payloads()))
    print(f"load: {LOAD_CLIENTS} clients, {LOAD_SECONDS:.0f} s: {counts['ok']} answered, {counts['errors']} errors")
    assert counts["errors"] == 0, counts["examples"]
    assert counts["ok"] >= LOAD_CLIENTS  # every client got at least one answer
    # The two worker processes' metrics are added up: every answered request is counted once.
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    line = next(
        x for x in metrics.splitlines() if x.startswith('granttag_http_requests_total{method="POST",route="/v1/classify",status="200"}')
    )
    assert float(line.rsplit(" ", 1)[1]) == counts["ok"]


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/healthz", {}, 200),
        ("/v1/taxonomy", {}, 401),
        ("/v1/taxonomy", {"Authorization": f"Bearer {CLASSIFY}"}, 200),
        ("/openapi.json", {}, 200),
        ("/docs", {}, 200),
    ],
)
def test_serve_real_server_answers(server: str, path: str, headers: dict[str, str], status: int) -> None:
    import httpx

    assert httpx.get(f"{server}{path}", headers=headers, timeout=10).status_code == status


def _listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is used on Linux only")
def test_serve_each_worker_has_its_own_listener(server: str) -> None:
    # uvicorn's shared socket let one worker take a whole burst of connections; with one
    # SO_REUSEPORT listener per worker the kernel spreads them (granttag/serving.py).
    port = int(server.rsplit(":", 1)[1])
    assert _listeners(port) == 2


def test_serve_refuses_a_port_in_use() -> None:
    from granttag.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {k: None for k in os.environ if k.startswith("GRANTTAG_API")} | {"GRANTTAG_API_KEYS": f"{ADMIN}:admin"}
        result = CliRunner().invoke(main, ["serve", "--port", str(port), "--workers", "2", "--no-queue"], env=env)
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_serve_no_queue_refuses_jobs(server: str) -> None:
    import httpx

    r = httpx.post(
        f"{server}/v1/jobs",
        files={"file": ("p.csv", b"id,text\n1,x\n", "text/csv")},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert r.status_code == 503
    assert "--no-queue" in r.json()["detail"]
