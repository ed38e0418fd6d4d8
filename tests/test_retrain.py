"""Retraining (issue 6): holdout and cross-validation figures, the quality gate, activation, rollback on workers, diff, CLI."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from classifier import store
from classifier.corpus import LabeledSet, corpus_files
from classifier.datastore import DataStore, record_dict
from classifier.errors import ModelNotFoundError
from classifier.model import ModelConfig
from classifier.records import read_records
from classifier.retraining import GatePolicy, apply_gate, diff_versions, history, retrain, retrain_from_store, rollback
from classifier.taxonomy import load_taxonomy
from classifier.validation import read_labeled
from granttag.cli import main

REDIS_TEST_URL = "redis://127.0.0.1:6379/14"
FAST = ModelConfig(cv=2, n_jobs=2)
#: Training records drawn from the corpus: enough that each half of a 2-fold split has every label.
TRAIN = 1500


def write_labeled(path: Path, data: LabeledSet) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for d, dm, pl in zip(data.docs, data.domains, data.pillars, strict=True):
            fh.write(json.dumps(record_dict(d, dm, pl), ensure_ascii=False) + "\n")
    return path


def shuffled(data: LabeledSet, seed: int = 1) -> LabeledSet:
    """The same texts with each record's labels taken from another record: a model of noise."""
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    out = data.subset(list(range(len(data))))
    out.domains = [data.domains[i] for i in order]
    out.pillars = [data.pillars[i] for i in order]
    return out


def make_split(tmp: Path) -> dict[str, Any]:
    """Training records and a holdout file drawn from the project corpus (disjoint)."""
    corpus = read_labeled(corpus_files(), load_taxonomy()).data
    order = list(range(len(corpus)))
    random.Random(0).shuffle(order)
    holdout = write_labeled(tmp / "holdout.jsonl", corpus.subset(sorted(order[:200])))
    train = corpus.subset(sorted(order[200 : 200 + TRAIN]))
    return {"train": train, "holdout": holdout, "train_file": write_labeled(tmp / "train.jsonl", train), "tmp": tmp}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_split(tmp_path_factory.mktemp("split"))


@pytest.fixture(scope="module")
def redis_settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings pointing at Redis database 14 (cleaned before and after)."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"needs Redis at {REDIS_TEST_URL} ({exc})")
    client.flushdb()
    from granttag.settings import get_settings

    settings = get_settings(broker_url=REDIS_TEST_URL, result_backend=REDIS_TEST_URL, models_dir=tmp_path_factory.mktemp("models"))
    yield settings
    client.flushdb()


@pytest.fixture(scope="module")
def runs(split: dict[str, Any], redis_settings: Any) -> dict[str, Any]:
    """A noise model made active, then a good candidate (accepted), then a noise candidate (rejected)."""
    from worker.registry import publish_active_model

    root = Path(redis_settings.models_dir)

    def publish(version: str) -> None:
        publish_active_model(redis_settings)

    out: dict[str, Any] = {"root": root, "publish": publish}
    out["first"] = retrain(shuffled(split["train"]), split["holdout"], config=FAST, cv_folds=0, root=root, on_activate=publish)
    out["good"] = retrain(split["train"], split["holdout"], config=FAST, cv_folds=2, root=root, on_activate=publish)
    out["worse"] = retrain(shuffled(split["train"], seed=2), split["holdout"], config=FAST, cv_folds=0, root=root, on_activate=publish)
    return out


def test_retrain_first_candidate_without_active_model_passes(runs: dict[str, Any]) -> None:
    first = runs["first"]
    assert first.activated and first.gate.baseline is None
    assert "no active model" in first.gate.reasons[0]


def test_retrain_better_candidate_is_activated(runs: dict[str, Any], redis_settings: Any) -> None:
    good = runs["good"]
    assert good.activated and good.gate.accepted
    assert good.gate.baseline == runs["first"].version
    figures = good.gate.figures["domains.micro_f1"]
    assert figures["candidate"] > figures["baseline"]


def test_retrain_worse_candidate_is_not_activated(runs: dict[str, Any], redis_settings: Any) -> None:
    from worker.registry import published_version

    worse = runs["worse"]
    assert not worse.activated and not worse.gate.accepted
    assert any("lower than the active model's" in r for r in worse.gate.reasons)
    assert store.active_version(runs["root"]) == runs["good"].version
    assert published_version(redis_settings) == runs["good"].version
    # The rejected candidate stays available with its report.
    listed = {m["version"]: m for m in store.list_versions(runs["root"])}
    assert listed[worse.version]["gate"]["decision"] == "rejected"
    assert listed[worse.version]["active"] is False


def test_retrain_meta_has_holdout_and_cross_validation_figures(runs: dict[str, Any], split: dict[str, Any]) -> None:
    meta = store.read_meta(runs["good"].version, runs["root"])
    assert meta["evaluation"]["gold"] == str(split["holdout"])
    assert meta["evaluation"]["documents"] == 200
    assert 0 < meta["evaluation"]["domains.micro_f1"] <= 1
    cv = meta["cross_validation"]
    assert cv["completed"] == 2 and "skipped" not in cv
    assert len(cv["domains.micro_f1"]["folds"]) == 2 and 0 < cv["domains.micro_f1"]["mean"] <= 1
    assert meta["training_records"] == TRAIN
    assert meta["gate"]["decision"] == "accepted"


def test_retrain_never_trains_on_the_holdout(split: dict[str, Any], runs: dict[str, Any]) -> None:
    from classifier.evaluation import load_gold
    from classifier.retraining import exclude_holdout

    holdout = load_gold(split["holdout"])
    mixed = split["train"].subset(list(range(50)))
    mixed.extend(holdout.subset(list(range(20))))
    kept, removed = exclude_holdout(mixed, holdout)
    assert (len(kept), removed) == (50, 20)


def test_rollback_restores_previous_version_on_workers(runs: dict[str, Any], redis_settings: Any) -> None:
    from worker.registry import published_version

    root = runs["root"]
    before, restored = rollback(root, on_activate=runs["publish"])
    assert (before, restored) == (runs["good"].version, runs["first"].version)
    assert store.active_version(root) == runs["first"].version
    assert published_version(redis_settings) == runs["first"].version
    assert [h["reason"] for h in history(root)] == ["retrain", "retrain", "rollback"]
    with pytest.raises(ModelNotFoundError, match="no earlier active version"):
        rollback(root)


def test_diff_versions_per_label_and_changed_records(runs: dict[str, Any], split: dict[str, Any]) -> None:
    records = list(read_records(split["holdout"]))[:40]
    out = diff_versions(runs["first"].version, runs["good"].version, records=records, root=runs["root"])
    assert [r["label"] for r in out["per_label"]][:2] == ["shipbuilding", "aviation"]
    assert len(out["per_label"]) == 23
    assert all(r["delta_f1"] is not None for r in out["per_label"])
    assert out["records"]["total"] == 40
    assert 0 < out["records"]["changed"] <= 40
    change = out["records"]["changes"][0]
    assert change["added"] or change["removed"]
    assert out["figures"]["domains.micro_f1"]["b"] > out["figures"]["domains.micro_f1"]["a"]


# --- the gate, table-driven --------------------------------------------------------------------------
def flat(dom: float, pil: float, labels: dict[str, tuple[int, float]]) -> dict[str, Any]:
    rows = [{"label": k, "support": s, "f1": f, "precision": f, "recall": f, "predicted": s} for k, (s, f) in labels.items()]
    return {"domains.micro_f1": dom, "pillars.micro_f1": pil, "domains.macro_f1": dom, "pillars.macro_f1": pil, "domains.per_label": rows}


GATE_CASES = [
    ("equal_passes", flat(0.7, 0.8, {"quantum": (10, 0.7)}), flat(0.7, 0.8, {"quantum": (10, 0.7)}), True),
    ("domain_micro_lower_fails", flat(0.69, 0.8, {"quantum": (10, 0.7)}), flat(0.7, 0.8, {"quantum": (10, 0.7)}), False),
    ("pillar_micro_lower_fails", flat(0.8, 0.79, {"quantum": (10, 0.7)}), flat(0.7, 0.8, {"quantum": (10, 0.7)}), False),
    ("label_drop_over_margin_fails", flat(0.75, 0.8, {"quantum": (10, 0.6)}), flat(0.7, 0.8, {"quantum": (10, 0.7)}), False),
    ("label_drop_within_margin_passes", flat(0.75, 0.8, {"quantum": (10, 0.66)}), flat(0.7, 0.8, {"quantum": (10, 0.7)}), True),
    ("label_drop_low_support_passes", flat(0.75, 0.8, {"quantum": (2, 0.1)}), flat(0.7, 0.8, {"quantum": (2, 0.9)}), True),
    ("no_baseline_passes", flat(0.1, 0.1, {}), None, True),
]


@pytest.mark.parametrize("case,candidate,baseline,accepted", GATE_CASES, ids=[c[0] for c in GATE_CASES])
def test_apply_gate_decides(case: str, candidate: dict, baseline: dict | None, accepted: bool) -> None:
    decision = apply_gate(candidate, baseline, None if baseline is None else "v0", GatePolicy(margin=0.05, min_support=5))
    assert decision.accepted is accepted, decision.reasons
    assert decision.as_dict()["decision"] == ("accepted" if accepted else "rejected")


# --- concurrency and the command line ---------------------------------------------------------------
def _adder(root: str, train_file: str, rounds: int) -> None:
    from classifier.validation import read_labeled as read

    data = read([Path(train_file)], load_taxonomy()).data
    st = DataStore(Path(root))
    for r in range(rounds):
        part = data.subset(list(range(r * 10, r * 10 + 10)))
        st.add(part, f"{train_file} part {r}")


def test_retrain_concurrent_with_data_add_loses_nothing(split: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "data"
    ds = DataStore(root)
    ds.set_active("corpus", False)
    base = split["train"]
    ds.add(base, "base")
    proc = mp.get_context("fork").Process(target=_adder, args=(str(root), str(split["train_file"]), 10))
    proc.start()
    result = retrain_from_store(ds, holdout=split["holdout"], cv_folds=2, calibration_cv=2, root=tmp_path / "models")
    proc.join()
    assert proc.exitcode == 0
    meta = result.meta
    used = [s for s in meta["data_sources"] if s["kind"] == "file"]
    # The retrain saw whole sources only: its record count is the sum of the sources it names.
    assert meta["training_records"] + meta["validation"]["duplicates_dropped"] == sum(s["records"] for s in used)
    assert all(s["records"] in (TRAIN, 10) for s in used)
    final = [s for s in ds.sources() if s.kind == "file"]
    assert len(final) == 11 and sum(s.records for s in final) == TRAIN + 100
    assert len(ds.snapshot()[0]) == TRAIN + 100


@pytest.fixture
def cli_env(split: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    data, models = tmp_path / "data", tmp_path / "models"
    models.mkdir()
    for key, value in {
        "GRANTTAG_DATA_DIR": str(data),
        "GRANTTAG_MODELS_DIR": str(models),
        "GRANTTAG_RETRAIN_CALIBRATION_CV": "2",
        "GRANTTAG_BROKER_URL": REDIS_TEST_URL,
        "GRANTTAG_RESULT_BACKEND": REDIS_TEST_URL,
    }.items():
        monkeypatch.setenv(key, value)
    return {"data": data, "models": models}


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_retrain_local_then_list_diff_rollback(split: dict[str, Any], cli_env: dict[str, Path], redis_settings: Any) -> None:
    assert run("data", "remove", "corpus").exit_code == 0
    assert run("data", "add", "--on-problem", "stop", str(split["train_file"])).exit_code == 0
    # A first, weaker version (labels shuffled), made active with `granttag models activate`.
    from classifier.training import train_and_save

    first = train_and_save(shuffled(split["train"]), FAST, cli_env["models"])
    assert run("models", "activate", first).exit_code == 0
    res = run("retrain", "--holdout", str(split["holdout"]), "--local", "--cv-folds", "0")
    assert res.exit_code == 0, res.output
    assert "accepted and activated" in res.output
    listed = json.loads(run("models", "list", "--json").output)
    active = [m for m in listed if m["active"]]
    assert len(active) == 1 and active[0]["version"] != first
    assert active[0]["evaluation"]["documents"] == 200 and active[0]["gate"]["decision"] == "accepted"
    diff = json.loads(run("models", "diff", first, active[0]["version"], "--gold", str(split["holdout"]), "--json").output)
    assert diff["figures_from"] == str(split["holdout"]) and len(diff["per_label"]) == 23
    res = run("models", "rollback")
    assert res.exit_code == 0, res.output
    assert f"rolled back from {active[0]['version']} to {first}" in res.output
    assert store.active_version(cli_env["models"]) == first


def test_cli_retrain_bad_holdout_exit_2(split: dict[str, Any], cli_env: dict[str, Path]) -> None:
    bad = split["tmp"] / "bad_holdout.jsonl"
    bad.write_text(
        '{"id": "h1", "title": "x", "abstract": "y", "domains": ["nope"], "pillars": ["science_renaissance"]}\n', encoding="utf-8"
    )
    res = run("retrain", "--holdout", str(bad), "--local")
    assert res.exit_code == 2
    assert "nope" in res.output
