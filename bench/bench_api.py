"""Latency and throughput of POST /v1/classify (issue 5), with real KAKEN abstracts as payloads.

Starts `granttag serve` on a loopback port, then for 1, 10 and 50 concurrent
clients (closed loop: each sends its next request when the last is answered)
measures p50/p95/p99 latency and requests per second; then 200 clients for
30 s, counting errors (the load test). Also times the classifier alone
(Model.predict on one document, no HTTP) for reference, and, with --celery,
one-document classification through a Celery task over Redis (a bench-only task
run by a worker this script starts: the round trip the API would add if it
sent single documents to the workers).

    python3 bench/bench_api.py [--seconds 20] [--workers 1,2] [--celery] [--repeat 5]

Prints the figures and writes them to bench/results/bench_api.json. The KAKEN
records are read from ../shared/data at run time and never stored.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KAKEN = REPO.parent / "shared" / "data" / "kaken" / "kaken_projects_2018-2025.jsonl.gz"
RESULTS = REPO / "bench" / "results" / "bench_api.json"
KEY = "bench-classify-key-0123456789"
CREDIT = "KAKEN：科学研究費助成事業データベース（国立情報学研究所）"


def payloads(n: int) -> list[dict[str, Any]]:
    """The first ``n`` KAKEN records with an abstract, as request bodies."""
    if not KAKEN.exists():
        sys.exit(f"needs {KAKEN} (the project's workplace data); not available here")
    out = []
    with gzip.open(KAKEN, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if not (r.get("abstract") or "").strip():
                continue
            out.append(
                {"id": r["award_number"], "title": r.get("title") or "", "abstract": r["abstract"], "keywords": r.get("keywords") or []}
            )
            if len(out) >= n:
                break
    return out


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50_ms": pick(0.50), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "mean_ms": round(statistics.fmean(ordered) * 1000, 1)}


def median_chars(docs: list[dict[str, Any]]) -> float:
    return float(statistics.median(len(d["abstract"]) for d in docs))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRANTTAG_API") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["GRANTTAG_API_KEYS"] = f"{KEY}:classify"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granttag.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-queue",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    ready = 0
    for _ in range(3000):
        if proc.poll() is not None:
            break
        try:
            ready = ready + 1 if httpx.get(f"{base}/readyz", timeout=2).status_code == 200 else 0
        except httpx.HTTPError:
            ready = 0
        if ready >= 20:
            return proc, base
        time.sleep(0.1)
    sys.exit(f"server did not become ready:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for these requests.

    httpx's AsyncClient spends more CPU per request than the server does once
    tens of connections are open (it answered /healthz 10x slower than this
    client with 50 connections on this machine), so it would measure itself.
    """

    def __init__(self, base: str) -> None:
        host, port = base.split("//", 1)[1].split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        data = await self.reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = self.reader = None


async def closed_loop(base: str, clients: int, seconds: float, docs: list[dict[str, Any]], warmup: float = 2.0) -> dict[str, Any]:
    """``clients`` concurrent clients for ``seconds`` (after ``warmup``); latencies of requests started after warm-up."""
    latencies: list[float] = []
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {KEY}"}
    bodies = [json.dumps(d, ensure_ascii=False).encode() for d in docs]
    start = time.monotonic()
    measure_from, deadline = start + warmup, start + warmup + seconds

    async def client(n: int) -> None:
        conn, i = Connection(base), n
        while True:
            t0 = time.monotonic()
            if t0 >= deadline:
                await conn.close()
                return
            try:
                status, data = await asyncio.wait_for(conn.post("/v1/classify", bodies[i % len(bodies)], headers), 300)
                ok = status == 200
                if not ok:
                    errors.append(f"{status} {data[:200]!r}")
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                ok = False
                errors.append(repr(exc))
                await conn.close()
            t1 = time.monotonic()
            if ok and t0 >= measure_from and t1 <= deadline:
                latencies.append(t1 - t0)
            i += clients

    await asyncio.gather(*(client(n) for n in range(clients)))
    out: dict[str, Any] = {"clients": clients, "seconds": seconds, "requests": len(latencies), "errors": len(errors)}
    out["rps"] = round(len(latencies) / seconds, 1)
    if latencies:
        out.update(percentiles(latencies))
    if errors:
        out["error_examples"] = errors[:3]
    return out


def bare_model(docs: list[dict[str, Any]], n: int = 300) -> dict[str, Any]:
    """Model.predict on one document at a time, in this process: the classifier's own cost."""
    from classifier.documents import make_document
    from classifier.store import ensure_default_model, load_model

    ensure_default_model()
    model = load_model()
    documents = [make_document(d, "bench") for d in docs[:n]]
    model.predict(documents[:5])
    latencies = []
    for doc in documents:
        t0 = time.perf_counter()
        model.predict([doc])
        latencies.append(time.perf_counter() - t0)
    return {"documents": len(documents), **percentiles(latencies), "model_version": model.version}


_MODEL: Any = None


def celery_app() -> Any:
    """A bench-only Celery app with one task: classify one document (model cached per worker process)."""
    from celery import Celery

    broker = os.environ.get("GRANTTAG_BENCH_BROKER", "redis://127.0.0.1:6379/14")
    app = Celery("bench_api", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"], worker_prefetch_multiplier=1)

    @app.task(name="bench.classify_one")
    def classify_one(doc: dict[str, Any]) -> dict[str, Any]:
        global _MODEL
        from classifier.documents import make_document
        from classifier.store import load_model

        if _MODEL is None:
            _MODEL = load_model()
        return _MODEL.predict([make_document(doc, "bench")])[0].as_dict()

    return app


if os.environ.get("GRANTTAG_BENCH_CELERY_WORKER"):
    app = celery_app()  # for `celery -A bench_api worker`, started by celery_round_trip


def celery_level(task: Any, docs: list[dict[str, Any]], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads each sending one document as a task and waiting for its result, for ``seconds``."""
    from concurrent.futures import ThreadPoolExecutor

    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                task.delay(docs[i % len(docs)]).get(timeout=120)
                latencies.append(time.monotonic() - t0)
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))
            i += clients

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": len(errors),
        "rps": round(len(latencies) / seconds, 1),
        **percentiles(latencies),
    }


def celery_round_trip(docs: list[dict[str, Any]], seconds: float, levels: list[int], log_dir: Path) -> dict[str, Any]:
    """One document per Celery task over Redis, answered through the result backend, at each concurrency level."""
    broker = os.environ.get("GRANTTAG_BENCH_BROKER", "redis://127.0.0.1:6379/14")
    env = {
        **os.environ,
        "GRANTTAG_BENCH_BROKER": broker,
        "GRANTTAG_BENCH_CELERY_WORKER": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'bench'}",
    }
    log = log_dir / "celery.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench_api", "worker", "-c", "2", "-l", "WARNING", "--without-gossip", "--without-mingle"],
        env=env,
        cwd=REPO / "bench",
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        os.environ["GRANTTAG_BENCH_BROKER"] = broker
        app = celery_app()
        classify_one = app.tasks["bench.classify_one"]
        app.control.purge()
        for _ in range(600):  # both worker processes load the model before the figures start
            try:
                for r in [classify_one.delay(d) for d in docs[:8]]:
                    r.get(timeout=60)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None:
                    sys.exit(f"celery worker exited:\n{log.read_text(errors='replace')[-3000:]}")
        out = {}
        for clients in levels:
            out[str(clients)] = celery_level(classify_one, docs, clients, seconds)
            print(f"celery  {clients:>3} clients: {out[str(clients)]}", flush=True)
        return out
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="Measured seconds per concurrency level.")
    parser.add_argument("--workers", default="1", help="uvicorn worker processes; a list (1,2) measures each.")
    parser.add_argument("--levels", default="1,10,50", help="Concurrency levels.")
    parser.add_argument("--load-clients", type=int, default=200)
    parser.add_argument("--load-seconds", type=float, default=30, help="Seconds of the many-clients run after the levels; 0 skips it.")
    parser.add_argument("--celery", action="store_true", help="Also measure one document per Celery task over Redis.")
    parser.add_argument("--docs", type=int, default=2000, help="KAKEN records used as payloads.")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Runs per level; the run with the median p99 is reported and every run's p99 listed (this machine is noisy).",
    )
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    docs = payloads(args.docs)
    result: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform(terse=True)},
        "command": " ".join(["python3", "bench/bench_api.py", *sys.argv[1:]]),
        "payloads": f"{len(docs)} KAKEN records ({CREDIT}), median abstract {median_chars(docs):.0f} chars",
        # This machine is shared with other work; the load average says how much (2 cores).
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    result["model_alone"] = bare_model(docs)
    print(f"model alone (Model.predict, 1 doc): {result['model_alone']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result["in_process"], result["load"] = {}, {}
        for workers in [int(w) for w in args.workers.split(",")]:
            proc, base = start_server(workers, Path(tmp) / "serve.log")
            name = f"workers={workers}"
            try:
                result["in_process"][name] = {}
                for clients in levels:
                    runs = []
                    for _ in range(args.repeat):
                        runs.append(asyncio.run(closed_loop(base, clients, args.seconds, docs)))
                        print(f"in-process {name} {clients:>3} clients: {runs[-1]}", flush=True)
                    runs.sort(key=lambda r: r.get("p99_ms", float("inf")))
                    figures = dict(runs[len(runs) // 2])
                    if args.repeat > 1:
                        figures["p99_ms_runs"] = [r.get("p99_ms") for r in runs]
                    result["in_process"][name][str(clients)] = figures
                if args.load_seconds > 0:  # --load-seconds 0 skips the overload run
                    load = asyncio.run(closed_loop(base, args.load_clients, args.load_seconds, docs, warmup=0))
                    keep = ("clients", "seconds", "requests", "errors", "rps", "p50_ms", "p99_ms", "error_examples")
                    result["load"][name] = {k: v for k, v in load.items() if k in keep}
                    print(f"load {name} {args.load_clients} clients {args.load_seconds:.0f} s: {result['load'][name]}", flush=True)
            finally:
                stop(proc)
        if args.celery:
            result["celery"] = celery_round_trip(docs, args.seconds, levels, Path(tmp))
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
