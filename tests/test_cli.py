"""The granttag command end to end: every file format and encoding, output formats, bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from granttag.cli import main

ROWS = [
    {"id": "p1", "title": "超伝導量子ビットの制御", "abstract": "超伝導量子ビットの高精度制御と量子誤り訂正を実証する。", "keywords": "量子コンピュータ; 量子ビット"},
    {"id": "p2", "title": "江戸文学の研究", "abstract": "近世の俳諧と出版文化の関係を文献資料から明らかにする。", "keywords": "近世文学"},
    {"id": "p3", "title": "Coastal flood forecasting", "abstract": "We build a real-time storm surge and flood forecasting system for coastal cities.", "keywords": ""},
]


def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _models(model_root: Path) -> None:
    """Every CLI test uses the session's trained model store."""


def write_csv(path: Path, rows: list[dict], encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with path.open("w", encoding=encoding, newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


def test_help_lists_commands() -> None:
    res = run("--help")
    assert res.exit_code == 0
    for cmd in ("classify", "train", "evaluate", "models"):
        assert cmd in res.output


def test_classify_text_json() -> None:
    res = run("classify", "--format", "json", "超伝導量子ビットを用いた量子コンピュータの誤り訂正を研究する。")
    assert res.exit_code == 0, res.output
    obj = json.loads(res.stdout)
    assert set(obj) == {"domains", "pillars", "model_version"}
    assert obj["domains"][0]["id"] == "quantum"
    assert {"id", "score", "evidence"} <= set(obj["domains"][0])
    assert {"term", "start", "end"} <= set(obj["domains"][0]["evidence"][0])
    scores = [d["score"] for d in obj["pillars"]]
    assert scores == sorted(scores, reverse=True)


def test_classify_stdin() -> None:
    res = run("classify", "--format", "json", input="Deep reinforcement learning for robot grasping.")
    assert res.exit_code == 0
    assert "ai_robotics" in [d["id"] for d in json.loads(res.stdout)["domains"]]


def test_classify_empty_text_fails_clearly() -> None:
    res = run("classify", "   ")
    assert res.exit_code == 2
    assert "empty text" in res.stderr


@pytest.mark.parametrize(
    "name, encoding, delimiter",
    [("in.csv", "utf-8", ","), ("bom.csv", "utf-8-sig", ","), ("sjis.csv", "cp932", ","), ("in.tsv", "utf-8", "\t")],
)
def test_classify_delimited_files(tmp_path: Path, name: str, encoding: str, delimiter: str) -> None:
    src = write_csv(tmp_path / name, ROWS, encoding, delimiter)
    out = tmp_path / "out.csv"
    res = run("classify", "--file", str(src), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
    assert "quantum" in rows[0]["domains"].split(";")
    assert rows[1]["domains"] == ""
    assert all(r["status"] == "ok" and r["pillars"] for r in rows)


def test_classify_jsonl_to_jsonl_with_custom_columns(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"pid": r["id"], "body": r["abstract"], "name": r["title"]}, ensure_ascii=False) for r in ROWS), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    res = run("classify", "-f", str(src), "--id-col", "pid", "--text-col", "body", "--title-col", "name", "-o", str(out))
    assert res.exit_code == 0, res.stderr
    objs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [o["id"] for o in objs] == ["p1", "p2", "p3"]
    assert objs[0]["domains"][0]["evidence"]


def test_classify_xlsx_round_trip(tmp_path: Path) -> None:
    from openpyxl import Workbook, load_workbook

    book = Workbook()
    sheet = book.active
    sheet.append(list(ROWS[0]))
    for r in ROWS:
        sheet.append(list(r.values()))
    src = tmp_path / "in.xlsx"
    book.save(src)
    out = tmp_path / "out.xlsx"
    res = run("classify", "-f", str(src), "-o", str(out))
    assert res.exit_code == 0, res.stderr
    rows = list(load_workbook(out).active.iter_rows(values_only=True))
    assert rows[0][:3] == ("id", "status", "domains")
    assert [r[0] for r in rows[1:]] == ["p1", "p2", "p3"]


def test_classify_bad_records_become_error_rows(tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"id": "ok1", "abstract": "リチウムイオン電池の正極材料を開発する。"}, ensure_ascii=False),
        "{not json",
        json.dumps({"id": "empty", "abstract": "  "}),
        json.dumps({"id": "ok2", "abstract": "Hypersonic aircraft engine design."}),
    ]
    src.write_bytes(("\n".join(lines) + "\n").encode() + b'{"id": "bytes", "abstract": "\xff\xfe"}\n')
    out = tmp_path / "out.jsonl"
    res = run("classify", "-f", str(src), "-o", str(out))
    assert res.exit_code == 1
    objs = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [o["status"] for o in objs] == ["ok", "error", "error", "ok", "error"]
    assert "line 2" in objs[1]["error"] and "malformed JSON" in objs[1]["error"]
    assert "empty text" in objs[2]["error"]
    assert "line 5" in objs[4]["error"] and "undecodable" in objs[4]["error"]
    assert "5 records: 2 tagged, 3 failed" in res.stderr


def test_classify_missing_column_and_empty_file(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "cols.csv", [{"key": "1", "body": "量子"}])
    res = run("classify", "-f", str(src))
    assert res.exit_code == 2 and "no id column" in res.stderr
    res = run("classify", "-f", str(src), "--id-col", "key", "--text-col", "missing")
    assert res.exit_code == 2 and "no column 'missing'" in res.stderr
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    res = run("classify", "-f", str(empty))
    assert res.exit_code == 2 and "empty" in res.stderr


def test_train_evaluate_and_models_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from classifier.corpus import corpus_files

    monkeypatch.setenv("GRANTTAG_MODELS_DIR", str(tmp_path / "store"))
    # A labeled CSV with names instead of ids, trained with the corpus.
    src = write_csv(
        tmp_path / "labeled.csv",
        [
            {"id": "L1", "title": "洋上風力", "abstract": "浮体式洋上風力発電の係留を開発する。", "domains": "資源・エネルギー・安全保障・GX;Ocean", "pillars": "strategic_technology"},
        ],
    )
    res = run("train", str(src), "--with-corpus")
    assert res.exit_code == 0, res.stderr
    version = res.stdout.strip()
    listing = run("models", "list", "--json")
    metas = json.loads(listing.stdout)
    assert [m["version"] for m in metas] == [version] and metas[0]["active"]
    assert metas[0]["training_records"] == 1 + sum(1 for f in corpus_files() for _ in f.open(encoding="utf-8"))
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        "\n".join(json.dumps({**r, "domains": d, "pillars": ["science_renaissance"]}, ensure_ascii=False) for r, d in zip(ROWS, [["quantum"], [], ["disaster_resilience"]])),
        encoding="utf-8",
    )
    res = run("evaluate", str(gold), "--json")
    assert res.exit_code == 0, res.stderr
    figures = json.loads(res.stdout)
    assert {"domains.micro_f1", "domains.macro_f1", "pillars.micro_f1"} <= set(figures)
    assert run("models", "activate", "no-such").exit_code == 2


def test_train_rejects_unknown_labels(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "bad.csv", [{"id": "1", "abstract": "量子", "domains": "warp_drive", "pillars": "science_renaissance"}])
    res = run("train", str(src))
    assert res.exit_code == 2
    assert "bad.csv line 2" in res.stderr and "warp_drive" in res.stderr


def test_cli_import_is_light() -> None:
    """`granttag --help` must not import the heavy libraries (they load inside commands)."""
    import subprocess
    import sys

    code = (
        "import sys, granttag.cli; heavy = [m for m in ('sklearn', 'fugashi', 'celery', 'fastapi', 'sqlalchemy', 'scipy', 'numpy') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_classify_evidence_same_under_any_hash_seed(model_root: Path) -> None:
    # Two taxonomy keywords of one label, equally long, both in the text: which one is shown
    # as evidence must not depend on the process's string hash seed.
    # ("研究力" and "URA" are both governance keywords; a threshold of 0.01 shows every label.)
    text = "大学の研究力を高めるURAの役割"
    outputs = []
    for seed in ("1", "2", "3", "5", "6"):
        env = {**os.environ, "GRANTTAG_MODELS_DIR": str(model_root), "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-m", "granttag.cli", "classify", text, "--format", "json", "--threshold", "0.01"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(json.loads(proc.stdout))
    assert all(out == outputs[0] for out in outputs)


def test_lazy_jsonl_records_parse_like_eager_ones(tmp_path: Path) -> None:
    # `granttag classify` leaves JSONL lines to the worker processes to parse: same records, same errors.
    from classifier.records import read_records

    src = tmp_path / "mixed.jsonl"
    src.write_bytes(
        b'{not json\n{"id": "a", "abstract": "\xe9\x87\x8f\xe5\xad\x90"}\n[1]\n\n{"id": 7, "title": "x"}\n\xff\xfe\n{"abstract": "no id"}\n'
    )
    eager = list(read_records(src))
    lazy = list(read_records(src, lazy=True))
    assert any(r.pending is not None for r in lazy)
    assert [r.parsed() for r in lazy] == eager
    assert [r.line for r in eager] == [1, 2, 3, 5, 6, 7]
    assert [r.raw_id for r in eager] == [None, "a", None, "7", None, None]
    assert "malformed JSON" in (eager[0].error or "") and "undecodable" in (eager[4].error or "")


def test_malformed_json_message_names_the_column_once(tmp_path: Path) -> None:
    from classifier.records import read_records

    src = tmp_path / "ctl.jsonl"
    src.write_text('{"id": "a", "abstract": "x\ty"}\n', encoding="utf-8")
    (record,) = read_records(src)
    assert record.error is not None and "malformed JSON: Invalid control character at column" in record.error
    assert " at at " not in record.error


def test_jsonl_render_is_json_of_the_outcome() -> None:
    # JSONL lines are written by orjson: one line each, the same JSON values as json.dumps gives,
    # non-ASCII kept as is and control characters escaped.
    from granttag.output import render

    outcome = {
        "id": "r\t1",
        "status": "ok",
        "domains": [{"id": "quantum", "score": 0.8125, "evidence": [{"term": "量子\u2028", "start": 0, "end": 3, "weight": 0.1}]}],
        "pillars": [],
        "model_version": "v1",
        "scores": {"quantum": 0.8125, "space": 1e-05},
    }
    line = render("jsonl", outcome)
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == outcome
    assert "量子" in line and "\\t" in line


@pytest.mark.parametrize(("before", "after"), [(None, "1"), ("4", "4")])
def test_classify_keeps_openblas_to_one_thread_unless_told(monkeypatch: pytest.MonkeyPatch, before: str | None, after: str) -> None:
    # Prediction makes no BLAS calls; an OpenBLAS thread pool would only spin beside the workers.
    if before is None:
        monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", before)
    res = run("classify", "--format", "json", "超伝導量子ビットを用いた量子コンピュータの誤り訂正を研究する。")
    assert res.exit_code == 0, res.output
    assert os.environ["OPENBLAS_NUM_THREADS"] == after
