"""The training data store and validation (issue 6): every kind of bad data with file and line, fix/skip/stop, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from classifier.corpus import LabeledSet, corpus_files
from classifier.datastore import DataStore
from classifier.taxonomy import load_taxonomy
from classifier.validation import read_labeled, validate_files
from granttag.cli import main

GOOD = {
    "id": "g1",
    "title": "超伝導量子ビットの誤り訂正",
    "abstract": "表面符号を用いた量子誤り訂正を超伝導回路で実証する。",
    "domains": ["quantum"],
    "pillars": ["science_renaissance"],
}
OTHER = {
    "id": "g2",
    "title": "港湾物流の最適化",
    "abstract": "コンテナターミナルの荷役計画を数理最適化で改善し、港湾の滞留時間を短縮する。",
    "domains": ["mobility_logistics"],
    "pillars": ["strategic_technology"],
}
NEAR = {**OTHER, "id": "g3", "abstract": OTHER["abstract"].replace("短縮する", "短縮させる")}


def rec(base: dict, **changes: object) -> dict:
    return {**base, **changes}


@pytest.fixture(scope="module")
def corpus() -> LabeledSet:
    return read_labeled(corpus_files(), load_taxonomy()).data


@pytest.fixture(scope="module")
def some(corpus: LabeledSet) -> LabeledSet:
    """A slice of the corpus as the data already in the store (quicker to compare with than all of it)."""
    return corpus.subset(list(range(0, len(corpus), 10)))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    with path.open("wb") as fh:
        for row in rows:
            fh.write(row if isinstance(row, bytes) else json.dumps(row, ensure_ascii=False).encode("utf-8"))
            fh.write(b"\n")
    return path


# (case, rows, expected kind, expected line)
CASES = [
    ("unknown_domain_id", [GOOD, rec(OTHER, domains=["quantumm"])], "unknown_label", 2),
    ("unknown_pillar_name", [GOOD, rec(OTHER, pillars=["科学の再興ではない"])], "unknown_label", 2),
    ("domain_listed_as_pillar", [rec(GOOD, pillars=["quantum"]), OTHER], "unknown_label", 1),
    ("no_pillar", [GOOD, rec(OTHER, pillars=[])], "no_pillar", 2),
    ("empty_text", [GOOD, rec(OTHER, title="", abstract="   ")], "empty_text", 2),
    ("whitespace_fullwidth", [GOOD, rec(OTHER, title="\u3000", abstract="\u3000\u3000")], "empty_text", 2),
    (
        "undecodable_bytes",
        [GOOD, b'{"id": "b", "title": "\xff\xfe", "abstract": "x", "domains": [], "pillars": ["science_renaissance"]}'],
        "undecodable",
        2,
    ),
    ("malformed_json", [GOOD, b'{"id": "b", "title": '], "unreadable", 2),
    ("exact_duplicate", [GOOD, OTHER, rec(OTHER, id="g9")], "duplicate", 3),
    (
        "duplicate_with_spacing_and_width",
        [OTHER, rec(OTHER, id="g9", title="港湾物流の最適化 ", abstract=OTHER["abstract"].replace("、", " , "))],
        "duplicate",
        2,
    ),
    ("conflicting_labels", [OTHER, GOOD, rec(GOOD, id="g9", domains=["quantum", "semiconductors_comm"])], "conflict", 3),
    ("near_duplicate", [OTHER, GOOD, NEAR], "near_duplicate", 3),
    (
        "emoji_and_mixed_text_ok_but_duplicate",
        [rec(GOOD, title="Quantum 量子 🚀"), rec(GOOD, id="g9", title="Quantum 量子 🚀")],
        "duplicate",
        2,
    ),
]


@pytest.mark.parametrize("case,rows,kind,line", CASES, ids=[c[0] for c in CASES])
def test_validation_finds_problem_with_file_and_line(tmp_path: Path, some: LabeledSet, case: str, rows: list, kind: str, line: int) -> None:
    path = write_jsonl(tmp_path / f"{case}.jsonl", rows)
    report = validate_files([path], load_taxonomy(), some)
    found = [(p.kind, p.line, p.path) for p in report.problems if p.kind != "too_few"]
    assert (kind, line, str(path)) in found, report.format()
    assert len(found) == 1, report.format()


def test_validation_clean_file_has_no_problems(tmp_path: Path, corpus: LabeledSet) -> None:
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD, OTHER])
    report = validate_files([path], load_taxonomy(), corpus)
    assert report.ok, report.format()
    assert len(report.data) == 2


def test_validation_duplicate_of_store_names_the_stored_record(tmp_path: Path, corpus: LabeledSet) -> None:
    first = json.loads(corpus_files()[0].read_text(encoding="utf-8").splitlines()[0])
    path = write_jsonl(tmp_path / "again.jsonl", [GOOD, first])
    report = validate_files([path], load_taxonomy(), corpus)
    dup = [p for p in report.problems if p.kind == "duplicate"]
    assert [p.line for p in dup] == [2]
    assert f"{corpus_files()[0]} line 1" in dup[0].message


def test_validation_csv_cp932_undecodable_row(tmp_path: Path, some: LabeledSet) -> None:
    path = tmp_path / "bad.csv"
    good = "id,title,abstract,domains,pillars\r\np1,量子計算,超伝導量子ビットの制御,quantum,science_renaissance\r\n".encode()
    path.write_bytes(good + b"p2,\xff,x,,science_renaissance\r\n")
    report = validate_files([path], load_taxonomy(), some)
    assert [(p.kind, p.line) for p in report.problems if p.kind != "too_few"] == [("undecodable", 3)], report.format()


def test_validation_too_few_examples_names_label_and_file(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "small.jsonl", [GOOD, OTHER, rec(OTHER, id="g4", title="別の港湾", abstract="鉄道貨物と港湾を結ぶ輸送網の設計を行う。")]
    )
    report = validate_files([path], load_taxonomy(), None)
    few = {p.message.split("'")[1] for p in report.problems if p.kind == "too_few"}
    assert {"quantum", "mobility_logistics", "space"} <= few
    assert all(p.path == str(path) and p.line == 0 for p in report.problems if p.kind == "too_few")


# --- the store and the CLI -------------------------------------------------------------------------
def run(*args: str, input: str | None = None, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("GRANTTAG_DATA_DIR", str(root))
    return root


def test_data_add_list_show_remove_roundtrip(tmp_path: Path, data_dir: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD, OTHER])
    res = run("data", "add", str(path))
    assert res.exit_code == 0, res.output
    assert "added s1: 2 records" in res.output
    listed = json.loads(run("data", "list", "--json").output)
    assert [(s["id"], s["kind"], s["active"]) for s in listed] == [
        ("corpus", "corpus", True),
        ("feedback", "feedback", True),
        ("s1", "file", True),
    ]
    assert listed[2]["origin"] == str(path.resolve()) and listed[2]["added"]
    shown = json.loads(run("data", "show", "s1", "--json").output)
    assert shown["records"] == 2 and shown["labels"]["quantum"] == 1
    assert shown["first_records"][0]["where"] == f"{path} line 1"
    assert run("data", "remove", "s1").exit_code == 0
    assert [s["id"] for s in json.loads(run("data", "list", "--json").output)] == ["corpus", "feedback"]
    assert not (data_dir / "training" / "files" / "s1.jsonl").exists()


def test_data_remove_builtin_deactivates_and_restore(data_dir: Path) -> None:
    res = run("data", "remove", "corpus")
    assert "deactivated corpus" in res.output
    store = DataStore(data_dir)
    assert [s.id for s in store.snapshot()[1]] == ["feedback"]
    run("data", "restore", "corpus")
    assert [s.id for s in store.snapshot()[1]] == ["corpus", "feedback"]


def test_data_remove_unknown_source_exit_2(data_dir: Path) -> None:
    res = run("data", "remove", "s99")
    assert res.exit_code == 2
    assert "no data source 's99'" in res.output


@pytest.mark.parametrize("choice,code,records", [("stop", 1, None), ("skip", 0, 2)])
def test_data_add_on_problem(tmp_path: Path, data_dir: Path, choice: str, code: int, records: int | None) -> None:
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, rec(OTHER, domains=["nope"]), OTHER, rec(OTHER, id="dup")])
    res = run("data", "add", "--on-problem", choice, str(path))
    assert res.exit_code == code, res.output
    assert f"{path} line 2: [unknown_label]" in res.output
    assert f"{path} line 4: [duplicate]" in res.output
    added = [s for s in DataStore(data_dir).sources() if s.kind == "file"]
    if records is None:
        assert added == [] and "nothing was imported" in res.output
    else:
        assert [s.records for s in added] == [records]
        assert added[0].skipped == [f"{path} line 2", f"{path} line 4"]


def test_data_add_ask_without_terminal_stops(tmp_path: Path, data_dir: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, rec(OTHER, pillars=[])])
    res = run("data", "add", str(path), input="skip\n")
    assert res.exit_code == 1
    assert [s for s in DataStore(data_dir).sources() if s.kind == "file"] == []


def test_data_add_fix_validates_again_after_edit(tmp_path: Path, data_dir: Path) -> None:
    path = write_jsonl(tmp_path / "fixme.jsonl", [GOOD, rec(OTHER, domains=["mobility_logisticss"])])
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys, pathlib\np = pathlib.Path(sys.argv[-1])\n"
        "p.write_text(p.read_text(encoding='utf-8').replace('logisticss', 'logistics'), encoding='utf-8')\n"
    )
    res = run(
        "data",
        "add",
        "--on-problem",
        "fix",
        str(path),
        env={"EDITOR": f"{sys.executable} {editor}", "VISUAL": f"{sys.executable} {editor}"},
    )
    assert res.exit_code == 0, res.output
    assert "[unknown_label]" in res.output and "added s1: 2 records" in res.output
    assert DataStore(data_dir).load("s1").domains[1] == ["mobility_logistics"]


def test_data_validate_writes_json_report(tmp_path: Path, data_dir: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [GOOD, rec(GOOD, id="again")])
    res = run("data", "validate", "--json", str(path))
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert report["counts"] == {"duplicate": 1}
    assert report["problems"][0]["where"] == f"{path} line 2"


# --- concurrency: adds and snapshots at once -----------------------------------------------------
def _adder(root: str, worker: int, rounds: int) -> None:
    store = DataStore(Path(root))
    for r in range(rounds):
        data = LabeledSet()
        from classifier.documents import Document

        for i in range(50):
            data.docs.append(Document(id=f"w{worker}-{r}-{i}", title=f"研究 {worker} {r} {i}", abstract="量子ビットの制御" * 20))
            data.domains.append(["quantum"])
            data.pillars.append(["science_renaissance"])
            data.sources.append(f"w{worker} round {r} line {i + 1}")
            data.langs.append("")
        store.add(data, f"worker {worker} round {r}")


def test_datastore_concurrent_add_and_snapshot_never_see_half(tmp_path: Path) -> None:
    store = DataStore(tmp_path)
    store.set_active("corpus", False)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_adder, args=(str(tmp_path), w, 8)) for w in range(3)]
    for p in procs:
        p.start()
    snapshots = 0
    while any(p.is_alive() for p in procs) or snapshots < 3:
        data, sources = store.snapshot()
        # Every source the index names is there whole: 50 records each, no more, no less.
        assert len(data) == 50 * sum(1 for s in sources if s.kind == "file")
        assert all(s.records == 50 for s in sources if s.kind == "file")
        snapshots += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    data, sources = store.snapshot()
    assert len([s for s in sources if s.kind == "file"]) == 24
    assert len({d.id for d in data.docs}) == 24 * 50
    assert len({s.id for s in sources}) == len(sources)


def test_datastore_feedback_is_one_active_source(tmp_path: Path) -> None:
    from classifier.documents import Document
    from classifier.feedback import append_feedback

    store = DataStore(tmp_path)
    store.set_active("corpus", False)
    doc = Document(id="fb1", title="量子センサ", abstract="ダイヤモンドNV中心を用いた量子センシングの実証。")
    append_feedback(tmp_path, doc, ["semiconductors_comm"], ["science_renaissance"], "editor")
    append_feedback(tmp_path, doc, ["quantum"], ["science_renaissance"], "editor")  # a later correction of the same document
    data, sources = store.snapshot()
    assert [s.id for s in sources] == ["feedback"]
    assert (len(data), data.domains) == (1, [["quantum"]])
    store.remove("feedback")
    assert len(store.snapshot()[0]) == 0
