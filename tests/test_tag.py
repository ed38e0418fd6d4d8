"""Batch tagging in-process (`granttag tag --local`): databases, files, bad records, resume, export, jobs."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from granttag.cli import main
from tests.test_tag_data import make_projects_db, synthetic_records


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def env(model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data dir of its own; the broker points at an unused port, so a --local job that touched Redis would fail."""
    monkeypatch.setenv("GRANTTAG_MODELS_DIR", str(model_root))
    monkeypatch.setenv("GRANTTAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("GRANTTAG_BROKER_URL", "redis://127.0.0.1:1/12")
    return tmp_path


def settings() -> Any:
    from granttag.settings import get_settings

    return get_settings()


def tag_rows(db: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT project_id, label_id, kind, score, model_version FROM project_tags ORDER BY project_id, label_id"
        ).fetchall()
    finally:
        con.close()


def error_rows(db: Path) -> dict[str, str]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT project_id, reason FROM project_tag_errors").fetchall())
    finally:
        con.close()


def only_job(data_dir: Path) -> str:
    from worker.jobs import list_jobs

    jobs = list_jobs(settings())
    assert len(jobs) == 1
    return str(jobs[0]["id"])


@pytest.mark.parametrize(("n", "jobs", "chunk"), [(1, 1, 500), (1500, 2, 200), (999, 1, 100)])
def test_tag_local_database_every_record_once(env: Path, n: int, jobs: int, chunk: int) -> None:
    from worker.jobs import job_status

    db = make_projects_db(env / "p.db", n)
    res = run("tag", f"sqlite:///{db}", "--local", "-j", str(jobs), "--chunk-size", str(chunk))
    assert res.exit_code == 0, res.output
    rows = tag_rows(db)
    assert {r[0] for r in rows} == {str(i) for i in range(1, n + 1)}
    assert all(r[2] in ("domain", "pillar") and 0 <= r[3] <= 1 for r in rows)
    status = job_status(settings(), only_job(env))
    assert (status["state"], status["total"], status["tagged"], status["failed"], status["skipped"]) == ("done", n, n, 0, 0)
    assert status["chunks_done"] == status["chunks"] == -(-n // chunk)


def test_tag_local_rerun_skips_and_retag_tags_again(env: Path) -> None:
    from worker.jobs import list_jobs

    db = make_projects_db(env / "p.db", 400)
    assert run("tag", f"sqlite:///{db}", "--local", "-j", "1").exit_code == 0
    first = tag_rows(db)
    again = run("tag", f"sqlite:///{db}", "--local", "-j", "1")
    assert again.exit_code == 0
    assert "0 tagged, 0 failed, 400 skipped" in again.output
    retag = run("tag", f"sqlite:///{db}", "--local", "-j", "1", "--retag")
    assert "400 tagged, 0 failed, 0 skipped" in retag.output
    assert tag_rows(db) == first  # same model, same tags, no duplicates
    assert [(j["tagged"], j["skipped"]) for j in sorted(list_jobs(settings()), key=lambda j: j["created"] + j["id"])] != []


BAD = [
    ("empty", "", "empty text"),
    ("whitespace", " \u3000\n\t ", "empty text"),
    ("binary blob", b"\x00\xff\xfe", "bytes"),
    ("undecodable text", "UNDECODABLE", "undecodable"),
    ("NUL in text", "量子\x00ビット", "binary"),
    ("over 1 MB", "量" * 1_000_001, "limit"),
]


@pytest.mark.parametrize(("case", "value", "reason"), BAD, ids=[b[0] for b in BAD])
def test_tag_local_bad_record_becomes_error_row(env: Path, case: str, value: Any, reason: str) -> None:
    db = make_projects_db(env / "p.db", 300)
    con = sqlite3.connect(db)
    if value == "UNDECODABLE":
        con.execute("UPDATE projects SET title = '', keywords = '', abstract = CAST(X'e9878fff' AS TEXT) WHERE id = 7")
    else:
        con.execute("UPDATE projects SET title = '', keywords = '', abstract = ? WHERE id = 7", (value,))
    con.commit()
    con.close()
    res = run("tag", f"sqlite:///{db}", "--local", "-j", "1", "--chunk-size", "100")
    assert res.exit_code == 1
    assert "299 tagged, 1 failed, 0 skipped" in res.output
    errors = error_rows(db)
    assert list(errors) == ["7"]
    assert reason in errors["7"]
    assert "7" not in {r[0] for r in tag_rows(db)}
    assert len({r[0] for r in tag_rows(db)}) == 299


def test_tag_file_local_one_row_per_record(env: Path) -> None:
    src = env / "projects.csv"
    records = synthetic_records(700)
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "abstract", "keywords"])
        for r in records:
            w.writerow([r["id"], r["title"], r["abstract"], r["keywords"]])
        w.writerow(["bad-cells", "only two"])
        w.writerow(["empty", "", "", ""])
    out = env / "tagged.csv"
    res = run("tag", str(src), "-o", str(out), "--local", "-j", "2", "--chunk-size", "128")
    assert res.exit_code == 1
    assert "700 tagged, 2 failed, 0 skipped" in res.output
    with out.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["id"] for r in rows] == [str(r["id"]) for r in records] + ["bad-cells", "empty"]
    assert {r["status"] for r in rows[:700]} == {"ok"}
    assert "2 cells where the header has 4" in rows[700]["error"]
    assert "empty text" in rows[701]["error"]


@pytest.mark.parametrize(("fmt"), ["jsonl", "xlsx", "tsv"])
def test_tag_file_local_output_formats(env: Path, fmt: str) -> None:
    src = env / "projects.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(30)) + "\n", encoding="utf-8")
    out = env / f"tagged.{fmt}"
    res = run("tag", str(src), "-o", str(out), "--local", "-j", "1")
    assert res.exit_code == 0, res.output
    if fmt == "jsonl":
        lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [x["id"] for x in lines] == [str(i) for i in range(1, 31)]
        assert all(x["pillars"] for x in lines)
    elif fmt == "tsv":
        assert len(out.read_text(encoding="utf-8").splitlines()) == 31
    else:
        from openpyxl import load_workbook

        assert load_workbook(out).active.max_row == 31


@pytest.mark.parametrize("how", ["rerun", "resume"])
def test_tag_local_resume_after_interrupt(env: Path, how: str) -> None:
    from worker.jobs import job_status, start_job

    db = make_projects_db(env / "p.db", 1000)
    seen: list[dict[str, Any]] = []

    def crash(result: dict[str, Any]) -> None:
        if result.get("event") != "start":
            seen.append(result)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start_job(
            settings(), {"kind": "database", "url": f"sqlite:///{db}", "table": "projects"}, local=True, chunk_size=100, progress=crash
        )
    job_id = only_job(env)
    half = job_status(settings(), job_id)
    assert (half["state"], half["chunks_done"], half["tagged"]) == ("running", 3, 300)
    if how == "rerun":
        res = run("tag", f"sqlite:///{db}", "--local", "-j", "1", "--chunk-size", "100")
    else:
        res = run("tag", "--resume", job_id, "--local", "-j", "1")
    assert res.exit_code == 0, res.output
    assert only_job(env) == job_id
    done = job_status(settings(), job_id)
    assert (done["state"], done["tagged"], done["failed"], done["skipped"]) == ("done", 1000, 0, 0)
    assert len({r[0] for r in tag_rows(db)}) == 1000


def test_tags_export_reads_back_tags(env: Path) -> None:
    db = make_projects_db(env / "p.db", 200, bad={3: ""})
    run("tag", f"sqlite:///{db}", "--local", "-j", "1")
    out = env / "tags.csv"
    res = run("tags", "export", f"sqlite:///{db}", "-o", str(out))
    assert res.exit_code == 0
    with out.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["project_id"], r["label_id"], r["kind"], float(r["score"]), r["model_version"]) for r in rows] == sorted(
        tag_rows(db), key=lambda r: (r[0], r[2], -r[3])
    )
    errs = env / "errors.jsonl"
    assert run("tags", "export", f"sqlite:///{db}", "--errors", "-o", str(errs)).exit_code == 0
    assert [json.loads(x)["project_id"] for x in errs.read_text(encoding="utf-8").splitlines()] == ["3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tag"], "give a SOURCE"),
        (["tag", "{dir}/projects.csv"], "needs -o FILE"),
        (["tag", "{dir}/projects.csv", "-o", "{dir}/out.pdf", "--local"], "output format"),
        (["tag", "{dir}/missing.csv", "-o", "{dir}/out.csv", "--local"], "no such file"),
        (["tag", "sqlite:///{dir}/p.db", "--table", "nope", "--local"], "no table 'nope'"),
        (["tag", "sqlite:///{dir}/p.db", "--text-col", "summary", "--local"], "no column 'summary'"),
        (["tag", "--resume", "nosuchjob", "--local"], "no job 'nosuchjob'"),
        (["tag", "sqlite:///{dir}/p.db"], "cannot reach Redis"),
        (["tags", "export", "sqlite:///{dir}/p.db"], "no project_tags table"),
        (["jobs", "show", "nosuchjob"], "no job 'nosuchjob'"),
        (["worker", "-Q", "nope"], "unknown queue"),
    ],
)
def test_tag_cli_usage_error_exit_2(env: Path, args: list[str], message: str) -> None:
    make_projects_db(env / "p.db", 5)
    (env / "projects.csv").write_text("id,abstract\n1,量子\n", encoding="utf-8")
    res = run(*[a.format(dir=env) for a in args])
    assert res.exit_code == 2
    assert message in res.output


def test_jobs_list_and_show_cli(env: Path) -> None:
    db = make_projects_db(env / "p.db", 120, bad={5: "   "})
    run("tag", f"sqlite:///{db}", "--local", "-j", "1", "--chunk-size", "50")
    job_id = only_job(env)
    listed = run("jobs", "list")
    assert job_id in listed.output and "done" in listed.output
    shown = json.loads(run("jobs", "show", job_id, "--json", "--errors").output)
    assert {k: shown[k] for k in ("id", "state", "total", "tagged", "failed", "skipped", "chunks")} == {
        "id": job_id,
        "state": "done",
        "total": 120,
        "tagged": 119,
        "failed": 1,
        "skipped": 0,
        "chunks": 3,
    }
    assert [r["id"] for r in shown["failed_records"]] == ["5"]


@pytest.mark.parametrize(("offset", "limit"), [(0, 10), (45, 10), (95, 50), (200, 5)])
def test_job_results_pages_in_input_order(env: Path, offset: int, limit: int) -> None:
    from worker.jobs import job_results

    db = make_projects_db(env / "p.db", 100)
    src = env / "p.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in synthetic_records(100)) + "\n", encoding="utf-8")
    run("tag", f"sqlite:///{db}", "--local", "-j", "1", "--chunk-size", "30")
    run("tag", str(src), "-o", str(env / "o.csv"), "--local", "-j", "1", "--chunk-size", "30")
    from worker.jobs import list_jobs

    expected = [str(i) for i in range(1, 101)][offset : offset + limit]
    for job in list_jobs(settings()):
        page = job_results(settings(), job["id"], offset, limit)
        assert [r["id"] for r in page] == expected
        assert all(r["status"] == "ok" and r["pillars"] for r in page)


def test_models_activate_without_redis_activates_locally(env: Path, model_root: Path) -> None:
    from classifier.store import active_version

    version = active_version(model_root)
    assert version is not None
    res = run("models", "activate", version)
    assert res.exit_code == 0
    assert f"active model: {version}" in res.output
    assert "activated locally only; not published" in res.output
    assert active_version(model_root) == version


def test_tag_local_database_file_replaced_between_jobs(env: Path) -> None:
    """A long-lived process (a worker, the API) sees a database file replaced under the same path."""
    db = make_projects_db(env / "p.db", 50)
    assert run("tag", f"sqlite:///{db}", "--local", "-j", "1").exit_code == 0
    db.unlink()
    make_projects_db(db, 60, seed=1)
    res = run("tag", f"sqlite:///{db}", "--local", "-j", "1")
    assert res.exit_code == 0, res.output
    assert "60 tagged, 0 failed, 0 skipped" in res.output
    assert len({r[0] for r in tag_rows(db)}) == 60
