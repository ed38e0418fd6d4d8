"""Commands for batch tagging and workers: `granttag tag`, `tags export`, `worker`, `jobs list|show|cancel` (issue 4).

Only click and the standard library are imported here; Celery, SQLAlchemy
and the model load inside the commands, so `granttag --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

#: Error lines printed on stderr before the rest are only counted.
MAX_ERROR_LINES = 20


def _run(fn: Any) -> Any:
    """Call ``fn``, turning an error the user can act on into a message and exit status 2."""
    from classifier.errors import GranttagError

    try:
        return fn()
    except GranttagError as exc:
        click.echo(f"granttag: {exc}", err=True)
        sys.exit(2)


def _settings() -> Any:
    from granttag.settings import get_settings

    return get_settings()


class _Progress:
    """A progress bar (records, records per second, ETA) fed by job statuses or chunk results."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.done = 0

    def status(self, status: dict[str, Any]) -> None:
        event = status.get("event")
        if event == "redis-down":
            self._note("Redis does not answer; waiting for it (the job's state is safe in its database)")
        elif event == "requeued":
            self._note("Redis lost the queue; the job's unfinished chunks were queued again")
        self._ensure(status.get("total") or 0)
        self._to(sum(int(status.get(k) or 0) for k in ("tagged", "failed", "skipped")))

    def chunk(self, result: dict[str, Any]) -> None:
        if result.get("event") == "start":
            self.status(result)
            return
        self._to(self.done + int(result.get("n", 0)))

    def _ensure(self, total: int) -> None:
        if self.bar is None and not self.quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="rec", file=sys.stderr, disable=None, smoothing=0.1)
            self.bar.update(self.done)

    def _to(self, done: int) -> None:
        if self.bar is not None and done > self.done:
            self.bar.update(done - self.done)
        self.done = max(self.done, done)

    def _note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif not self.quiet:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _column_options(fn: Any) -> Any:
    for name, help_ in reversed(
        [
            ("id", "column with the project id"),
            ("title", "column with the title"),
            ("text", "column with the abstract/text"),
            ("keywords", "column with keywords"),
            ("program", "column with the funding program"),
            ("field", "column with the field code (e.g. KAKEN review section)"),
        ]
    ):
        fn = click.option(f"--{name}-col", default=None, help=help_.capitalize() + ".")(fn)
    return fn


def register(main: Any) -> None:
    """Add the batch-tagging and worker commands to the ``granttag`` group."""

    @main.command("tag")
    @click.argument("source", required=False)
    @click.option("--table", default="projects", show_default=True, help="Table of projects (database sources).")
    @_column_options
    @click.option("--dest", default=None, help="Database URL for project_tags (default: the source database).")
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path),
        default=None,
        help="Output file (file sources): csv, tsv, jsonl or xlsx by suffix.",
    )
    @click.option(
        "--input-format",
        type=click.Choice(["csv", "tsv", "jsonl", "xlsx"]),
        default=None,
        help="Input format when the suffix does not say.",
    )
    @click.option("--local", is_flag=True, help="Tag in this process, without Redis or workers.")
    @click.option("-j", "--jobs", type=click.IntRange(1), default=None, help="Processes for --local (default: all cores).")
    @click.option(
        "--chunk-size", type=click.IntRange(1, 20_000), default=None, help="Records per chunk (default GRANTTAG_CHUNK_SIZE, 500)."
    )
    @click.option("--resume", "resume", default=None, metavar="JOB", help="Continue job JOB (SOURCE is then not needed).")
    @click.option("--retag", is_flag=True, help="Tag again records already tagged by the active model version.")
    @click.option("--detach", is_flag=True, help="Queue the job, print its id and return (follow it with `granttag jobs show`).")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
    def tag(source: str | None, **kw: Any) -> None:
        """Tag every project of SOURCE: a database URL (sqlite:///projects.db, postgresql://…) or a CSV/TSV/JSONL/XLSX file.

        A database gets its tags in a project_tags table (created if missing;
        an idempotent upsert, so re-runs never duplicate). A file gets an
        output file (-o) with one row per input record. Without --local the
        chunks go to the Celery workers (`granttag worker`) through Redis.
        An interrupted job continues with --resume JOB or by running the same
        command again; records already tagged by the same model version are
        skipped unless --retag.

        Exit status: 0 every record tagged or skipped, 1 some failed (error
        rows) or the job did not finish, 2 a usage, source or service error.
        """
        _run(lambda: _tag(source, **kw))

    @main.group("tags")
    def tags() -> None:
        """Read tags back from a database."""

    @tags.command("export")
    @click.argument("url")
    @click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Output file (default: standard output).")
    @click.option(
        "--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl"]), default=None, help="Default: from the -o suffix, else csv."
    )
    @click.option("--errors", is_flag=True, help="Export the records that could not be tagged, with the reason, instead.")
    def tags_export(url: str, output: Path | None, fmt: str | None, errors: bool) -> None:
        """Write the project_tags rows of the database at URL (one row per project and label)."""
        _run(lambda: _export(url, output, fmt, errors))

    @main.command("worker")
    @click.option(
        "-c",
        "--concurrency",
        type=click.IntRange(1),
        default=None,
        help="Worker processes (default GRANTTAG_WORKER_CONCURRENCY, else cores).",
    )
    @click.option("-Q", "--queues", default="tag", show_default=True, help="Queues to serve: tag, train, or tag,train.")
    @click.option("-n", "--hostname", default=None, help="Node name (default granttag-<pid>@<host>).")
    @click.option("-l", "--loglevel", default="INFO", show_default=True, help="Log level.")
    @click.option("--preload/--no-preload", default=True, help="Load the active model before forking, so the processes share it.")
    def worker(concurrency: int | None, queues: str, hostname: str | None, loglevel: str, preload: bool) -> None:
        """Start a Celery worker that tags chunks from Redis (GRANTTAG_BROKER_URL)."""

        def go() -> None:
            from worker.app import QUEUES, create_celery
            from worker.registry import check_redis, current_model

            settings = _settings()
            wanted = [q.strip() for q in queues.split(",") if q.strip()]
            unknown = [q for q in wanted if q not in QUEUES]
            if unknown:
                from classifier.errors import InvalidInputError

                raise InvalidInputError(f"unknown queue(s) {', '.join(unknown)}; the queues are {', '.join(QUEUES)}")
            check_redis(settings)
            if preload and "tag" in wanted:
                model = current_model(settings)
                click.echo(f"model {model.version} loaded", err=True)
            app = create_celery(settings)
            n = concurrency or settings.worker_concurrency or os.cpu_count() or 1
            argv = ["worker", "-Q", ",".join(wanted), "-c", str(n), "-l", loglevel, "-n", hostname or f"granttag-{os.getpid()}@%h"]
            app.worker_main(argv + ["--without-gossip", "--without-mingle"])

        _run(go)

    @main.group("jobs")
    def jobs() -> None:
        """List, show and cancel batch-tagging jobs."""

    @jobs.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def jobs_list(as_json: bool) -> None:
        """List the jobs this machine or Redis knows of, newest first."""

        def go() -> None:
            from worker.jobs import list_jobs

            found = list_jobs(_settings())
            if as_json:
                click.echo(json.dumps(found, ensure_ascii=False, indent=2))
                return
            if not found:
                click.echo("no jobs yet (`granttag tag` starts one)")
            for s in found:
                if s["state"] == "unknown":
                    click.echo(f"{s['id']}  unknown  ({s.get('error')})")
                    continue
                click.echo(
                    f"{s['id']}  {s['state']:<9} {s['tagged'] + s['failed'] + s['skipped']}/{s['total']}  "
                    f"tagged {s['tagged']}, failed {s['failed']}, skipped {s['skipped']}  {s['created']}  {_describe(s['source'])}"
                )

        _run(go)

    @jobs.command("show")
    @click.argument("job")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.option("--errors", is_flag=True, help="Also list the records that failed, with the reason.")
    def jobs_show(job: str, as_json: bool, errors: bool) -> None:
        """Show a job's state and counts."""

        def go() -> None:
            from worker.jobs import job_status

            settings = _settings()
            status = job_status(settings, job)
            bad = _failed_records(settings, job, status) if errors else []
            if as_json:
                click.echo(json.dumps({**status, **({"failed_records": bad} if errors else {})}, ensure_ascii=False, indent=2))
                return
            for key in (
                "id",
                "state",
                "total",
                "tagged",
                "failed",
                "skipped",
                "model_versions",
                "created",
                "updated",
                "chunks",
                "chunks_done",
                "chunks_failed",
            ):
                click.echo(f"{key:<14} {status.get(key)}")
            click.echo(f"{'source':<14} {_describe(status['source'])}")
            for line in status.get("errors", []) + status.get("source_errors", []):
                click.echo(f"error          {line}")
            for rec in bad:
                click.echo(f"failed record  {rec['id']}: {rec.get('error')}")

        _run(go)

    @jobs.command("cancel")
    @click.argument("job")
    def jobs_cancel(job: str) -> None:
        """Cancel a job; chunks already tagged stay, the rest are not tagged."""

        def go() -> None:
            from worker.jobs import cancel_job

            click.echo(f"job {job}: {'cancelled' if cancel_job(_settings(), job) else 'already finished'}")

        _run(go)


def _describe(source: dict[str, Any]) -> str:
    if source.get("kind") == "database":
        return f"{source.get('url')} table {source.get('table')}"
    return str(source.get("path", ""))


def _failed_records(settings: Any, job_id: str, status: dict[str, Any], limit: int = 1000) -> list[dict[str, Any]]:
    from worker.jobs import job_results

    out: list[dict[str, Any]] = []
    offset = 0
    while offset < status["total"] and len(out) < limit:
        page = job_results(settings, job_id, offset, 5000)
        if not page:
            break
        out.extend(r for r in page if r.get("status") != "ok")
        offset += 5000
    return out[:limit]


def _tag(source: str | None, **kw: Any) -> None:
    from classifier.errors import InvalidInputError
    from worker import jobs as J
    from worker.sql import is_url

    settings = _settings()
    local: bool = kw["local"]
    output: Path | None = kw["output"]
    ncpu = kw["jobs"] or os.cpu_count() or 1
    columns = {name: kw[f"{name}_col"] for name in ("id", "title", "text", "keywords", "program", "field") if kw[f"{name}_col"]}
    if kw["resume"]:
        if source:
            raise InvalidInputError("give either SOURCE or --resume JOB, not both")
        job_id: str = kw["resume"]
        kind = J.job_status(settings, job_id)["kind"]
    elif not source:
        raise InvalidInputError("give a SOURCE (a database URL or a file), or --resume JOB")
    else:
        if is_url(source):
            src: dict[str, Any] = {"kind": "database", "url": source, "table": kw["table"], "columns": columns, "dest": kw["dest"]}
        else:
            if output is None:
                raise InvalidInputError("a file source needs -o FILE for the tagged records (csv, tsv, jsonl or xlsx)")
            src = {"kind": "file", "path": source, "format": kw["input_format"], "columns": columns}
        kind = src["kind"]
    if kind == "file" and output is None:
        raise InvalidInputError("a file job needs -o FILE for the tagged records")
    if output is not None:
        fmt = output.suffix.lower().lstrip(".")
        if fmt not in ("csv", "tsv", "jsonl", "xlsx"):
            raise InvalidInputError(f"{output}: cannot tell the output format from its suffix; use .csv, .tsv, .jsonl or .xlsx")
    progress = _Progress(kw["quiet"])
    started_job: list[str] = []
    try:
        if kw["resume"]:
            J.resume_job(settings, job_id, local=local, jobs=ncpu, progress=progress.chunk)
        else:
            job_id = J.start_job(
                settings, src, retag=kw["retag"], local=local, jobs=ncpu, chunk_size=kw["chunk_size"], progress=progress.chunk
            )
        started_job.append(job_id)
        if not local:
            if kw["detach"]:
                click.echo(job_id)
                return
            click.echo(f"job {job_id} queued for the workers", err=True)
            if not _workers_answer(settings):
                click.echo("no worker answers yet: start one with `granttag worker` (the job waits for it)", err=True)
            J.follow_job(settings, job_id, progress.status)
    except KeyboardInterrupt:
        progress.close()
        where = "; its chunks stay queued for the workers" if not local else ""
        hint = f"`granttag tag --resume {started_job[0]}{' --local' if local else ''}`" if started_job else "the same command again"
        click.echo(f"interrupted{where}. Continue with {hint} (records already tagged are skipped).", err=True)
        sys.exit(1)
    finally:
        progress.close()
    status = J.job_status(settings, job_id)
    if kind == "file" and output is not None and status["state"] == "done":
        _write_output(settings, job_id, status, output)
    _summary(settings, job_id, status, kind)


def _workers_answer(settings: Any) -> bool:
    """Return True when at least one worker answers a ping within a second."""
    from worker.app import create_celery

    try:
        return bool(create_celery(settings).control.ping(timeout=1.0))
    except Exception:  # noqa: BLE001 - only a hint; following the job reports real trouble
        return True


def _write_output(settings: Any, job_id: str, status: dict[str, Any], output: Path) -> None:
    from granttag.output import Writer
    from worker.jobs import job_results

    fmt = output.suffix.lower().lstrip(".")
    writer = Writer(fmt, output)
    try:
        offset = 0
        while offset < status["total"]:
            page = job_results(settings, job_id, offset, 5000)
            if not page:
                break
            for outcome in page:
                writer.write(outcome)
            offset += len(page)
    finally:
        writer.close()


def _summary(settings: Any, job_id: str, status: dict[str, Any], kind: str) -> None:
    shown = 0
    if status["failed"]:
        for rec in _failed_records(settings, job_id, status, MAX_ERROR_LINES):
            click.echo(f"error: {rec.get('error')}", err=True)
            shown += 1
        for line in status.get("source_errors", []):
            click.echo(f"error: {line}", err=True)
        if status["failed"] > shown:
            click.echo(f"... and more: `granttag jobs show {job_id} --errors`", err=True)
    for line in status.get("errors", []):
        click.echo(f"chunk error: {line}", err=True)
    versions = ", ".join(status["model_versions"]) or "-"
    click.echo(
        f"job {job_id} {status['state']}: {status['total']} records: {status['tagged']} tagged, {status['failed']} failed, "
        f"{status['skipped']} skipped (model {versions})",
        err=True,
    )
    if status["state"] != "done":
        click.echo(f"the job is not finished; continue with `granttag tag --resume {job_id}`", err=True)
        sys.exit(1)
    if status["failed"]:
        sys.exit(1)


def _export(url: str, output: Path | None, fmt: str | None, errors: bool) -> None:
    import csv

    from sqlalchemy import inspect, select

    from classifier.errors import InvalidInputError
    from worker.sql import ERRORS_TABLE, TAGS_TABLE, engine, is_url, normalize_url, safe_url, schema

    if not is_url(url):
        raise InvalidInputError(f"not a database URL: {url!r} (e.g. sqlite:///projects.db)")
    url = normalize_url(url)
    name = ERRORS_TABLE if errors else TAGS_TABLE
    if name not in inspect(engine(url)).get_table_names():
        raise InvalidInputError(f"{safe_url(url)} has no {name} table; tag it first with `granttag tag`")
    table = schema(url)["errors" if errors else "tags"]
    order = [table.c.project_id] if errors else [table.c.project_id, table.c.kind, table.c.score.desc()]
    fmt = fmt or (output.suffix.lower().lstrip(".") if output is not None else "csv")
    if fmt not in ("csv", "tsv", "jsonl"):
        raise InvalidInputError(f"unknown export format {fmt!r}; use csv, tsv or jsonl")
    fh = output.open("w", encoding="utf-8", newline="") if output is not None else sys.stdout
    cols = [c.name for c in table.columns]
    n = 0
    try:
        writer = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",") if fmt != "jsonl" else None
        if writer is not None:
            writer.writerow(cols)
        with engine(url).connect() as conn:
            for row in conn.execution_options(stream_results=True).execute(select(table).order_by(*order)):
                values = list(row)
                if writer is not None:
                    writer.writerow(values)
                else:
                    fh.write(json.dumps(dict(zip(cols, values, strict=True)), ensure_ascii=False) + "\n")
                n += 1
    finally:
        if fh is not sys.stdout:
            fh.close()
    click.echo(f"{n} {name} rows", err=True)
