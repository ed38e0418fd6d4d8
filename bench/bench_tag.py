"""Benchmark batch tagging (issue 4): records per second in-process and through Celery workers, overhead, worker memory.

Reads KAKEN records from ../shared/data at run time into a SQLite database in
a temporary directory (nothing is written into the repository but the
figures), then tags it:

- ``--local`` with 1 and 2 processes, each run in a new Python process (as a
  Celery worker is started afresh for each run, so both start with the
  model's per-process caches empty);
- through Celery with 1 worker process and with 2 worker processes (Redis on
  127.0.0.1, database 12, flushed before and after);
- optionally (``--full``) every KAKEN record through 2 worker processes.

It prints the figures and writes them to bench/results/bench_tag.json.
Credit: 「KAKEN：科学研究費助成事業データベース（国立情報学研究所）」.

    python3 bench/bench_tag.py --records 50000 [--full]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KAKEN = REPO.parent / "shared" / "data" / "kaken" / "kaken_projects_2018-2025.jsonl.gz"
CREDIT = "KAKEN：科学研究費助成事業データベース（国立情報学研究所）"
BROKER = "redis://127.0.0.1:6379/12"
sys.path.insert(0, str(REPO))  # the code of this checkout, not whichever granttag is installed


def build_db(path: Path, limit: int | None, kaken: Path = KAKEN) -> int:
    """Write KAKEN records (at most ``limit``) into a ``projects`` table; return how many."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE projects (id TEXT PRIMARY KEY, title TEXT, abstract TEXT, keywords TEXT, program TEXT, field TEXT)")
    n = 0
    batch = []
    with gzip.open(kaken, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            batch.append(
                (
                    r["award_number"],
                    r.get("title") or "",
                    r.get("abstract") or "",
                    "; ".join(r.get("keywords") or []),
                    r.get("research_category") or "",
                    r.get("review_section") or "",
                )
            )
            n += 1
            if len(batch) >= 10_000:
                con.executemany("INSERT OR IGNORE INTO projects VALUES (?, ?, ?, ?, ?, ?)", batch)
                batch = []
            if limit is not None and n >= limit:
                break
    con.executemany("INSERT OR IGNORE INTO projects VALUES (?, ?, ?, ?, ?, ?)", batch)
    con.commit()
    n = con.execute("SELECT COUNT(*) FROM projects").fetchone()[0]
    con.close()
    return int(n)


def copy_db(src: Path, dst: Path) -> Path:
    """A fresh copy of the source table (no tags yet)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def peak_rss_mb(pid: int) -> dict[str, dict[str, float]]:
    """Memory of a process and of each child, in MB: peak resident (VmHWM), and resident now split into
    anonymous (private to the process) and file-backed (the mmap'd MeCab dictionary, shared by all processes)."""
    out: dict[str, dict[str, float]] = {}
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            fields = {}
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(("VmHWM:", "RssAnon:", "RssFile:")):
                    fields[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
            out["main" if p == pid else f"child-{p}"] = fields
        except OSError:
            continue
    return out


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "granttag.cli",
            "worker",
            "-c",
            str(concurrency),
            "-l",
            "INFO",
            "-n",
            f"bench{concurrency}-{os.getpid()}@%h",
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO,
    )
    for _ in range(3000):
        if " ready." in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"worker did not start:\n{log.read_text(errors='replace')[-2000:]}")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# A --local run in a process of its own, like a freshly started Celery worker: the
# per-process caches of the model (morpheme features, columns) start empty in both.
_LOCAL_RUN = """
import json, sys, time
from granttag.settings import get_settings
from worker.jobs import job_status, start_job
settings = get_settings()
start = time.perf_counter()
source = {"kind": "database", "url": "sqlite:///" + sys.argv[1], "table": "projects"}
job_id = start_job(settings, source, local=True, jobs=int(sys.argv[2]))
seconds = time.perf_counter() - start
status = job_status(settings, job_id)
print(json.dumps({"seconds": round(seconds, 1), **{k: status[k] for k in ("total", "tagged", "failed", "skipped")}}))
"""


def run_local(env: dict[str, str], db: Path, jobs: int) -> dict[str, Any]:
    """Tag ``db`` with ``--local`` and ``jobs`` processes in a new Python process; time it there (model loading included)."""
    command = [sys.executable, "-c", _LOCAL_RUN, str(db), str(jobs)]
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_celery(settings: Any, env: dict[str, str], db: Path, procs: int, tmp: Path) -> dict[str, Any]:
    import redis

    from worker.jobs import follow_job, start_job

    redis.Redis.from_url(BROKER).flushdb()
    worker = start_worker(env, procs, tmp / f"worker{procs}.log")
    try:
        start = time.perf_counter()
        job_id = start_job(settings, {"kind": "database", "url": f"sqlite:///{db}", "table": "projects"})
        status = follow_job(settings, job_id, lambda s: None, poll=0.5)
        seconds = time.perf_counter() - start
        memory = peak_rss_mb(worker.pid)
    finally:
        stop_worker(worker)
    children = [v for k, v in memory.items() if k != "main"]
    return {
        "seconds": round(seconds, 1),
        **{k: status[k] for k in ("total", "tagged", "failed", "skipped")},
        "peak_rss_mb_main": memory.get("main", {}).get("VmHWM", 0),
        "peak_rss_mb_per_process": max([c.get("VmHWM", 0) for c in children] or [0]),
        "rss_anon_mb_per_process_at_end": max([c.get("RssAnon", 0) for c in children] or [0]),
        "rss_file_mb_per_process_at_end": max([c.get("RssFile", 0) for c in children] or [0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="KAKEN records for the comparison runs")
    parser.add_argument("--full", action="store_true", help="also tag every KAKEN record through 2 worker processes")
    parser.add_argument("--skip-local", action="store_true", help="skip the --local runs")
    parser.add_argument("--repeat", type=int, default=1, help="run every configuration this many times, interleaved; report the median")
    parser.add_argument("--kaken", type=Path, default=KAKEN, help="the KAKEN JSONL.gz (default: ../shared/data/kaken/...)")
    args = parser.parse_args()
    if not args.kaken.exists():
        sys.exit(f"needs {args.kaken} (the project's workplace data); not available here")
    tmp = Path(tempfile.mkdtemp(prefix="bench-tag-"))
    env = {**os.environ, "GRANTTAG_BROKER_URL": BROKER, "GRANTTAG_RESULT_BACKEND": BROKER, "GRANTTAG_DATA_DIR": str(tmp / "data")}
    os.environ.update(env)
    from classifier.store import ensure_default_model
    from granttag.settings import get_settings

    settings = get_settings()
    version = ensure_default_model(echo=lambda m: print(m, file=sys.stderr))
    src = tmp / "kaken.db"
    n = build_db(src, args.records, args.kaken)
    print(f"{n} KAKEN records in {src}; model {version}", file=sys.stderr)
    figures: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": os.getloadavg(),
        },
        "model_version": version,
        "records": n,
        "command": "python3 bench/bench_tag.py " + " ".join(sys.argv[1:]),
        "data_credit": CREDIT,
        "runs": {},
    }
    runs = figures["runs"]
    plan: list[tuple[str, Any]] = []
    if not args.skip_local:
        plan += [("local_1", lambda db: run_local(env, db, 1)), ("local_2", lambda db: run_local(env, db, 2))]
    plan += [("celery_1", lambda db: run_celery(settings, env, db, 1, tmp)), ("celery_2", lambda db: run_celery(settings, env, db, 2, tmp))]
    # Interleaved repeats, so a burst of load on a shared machine does not land on one configuration only.
    for round_ in range(args.repeat):
        for name, fn in plan:
            db = copy_db(src, tmp / f"{name}-{round_}.db")
            result = fn(db)
            db.unlink()
            print(f"{name:<10} round {round_ + 1}: {result}", file=sys.stderr)
            runs.setdefault(name, {"all_seconds": []})["all_seconds"].append(result.pop("seconds"))
            runs[name].update(result)
    for result in runs.values():
        times = sorted(result["all_seconds"])
        result["seconds"] = (
            times[len(times) // 2] if len(times) % 2 else round((times[len(times) // 2 - 1] + times[len(times) // 2]) / 2, 1)
        )
        result["records_per_second"] = round(result["total"] / result["seconds"], 1)
    for p in (1, 2):
        if f"local_{p}" in runs:
            runs[f"celery_{p}"]["overhead_vs_local"] = round(runs[f"celery_{p}"]["seconds"] / runs[f"local_{p}"]["seconds"] - 1, 3)
    if args.full:
        full = tmp / "full.db"
        total = build_db(full, None, args.kaken)
        result = run_celery(settings, env, full, 2, tmp)
        result["records_per_second"] = round(result["total"] / result["seconds"], 1)
        runs["full_celery_2"] = result
        print(f"full ({total}) {result}", file=sys.stderr)
    figures["machine"]["load_after"] = os.getloadavg()
    out = REPO / "bench" / "results" / "bench_tag.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, ensure_ascii=False, indent=2))
    import redis

    redis.Redis.from_url(BROKER).flushdb()


if __name__ == "__main__":
    main()
