"""Training, prediction, explanations, determinism and model storage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from classifier import store
from classifier.documents import Document, make_document
from classifier.errors import InvalidInputError, ModelIntegrityError, ModelNotFoundError, TrainingDataError
from classifier.model import ModelConfig, train_model
from classifier.taxonomy import load_taxonomy


def test_taxonomy_has_guide_ids() -> None:
    tax = load_taxonomy()
    assert len(tax.domains) == 17 and len(tax.pillars) == 6
    assert tax.domain_ids[0] == "shipbuilding" and tax.domain_ids[-1] == "space"
    assert tax.resolve("量子").id == "quantum"
    assert tax.resolve("Fusion energy").id == "fusion"
    assert tax.resolve("governance").kind == "pillar"


def test_predict_quantum_text(model) -> None:  # type: ignore[no-untyped-def]
    doc = Document(
        "q",
        title="超伝導量子ビットの誤り訂正",
        abstract="超伝導量子ビットを用いた表面符号による量子誤り訂正を実証し、量子コンピュータの実現を目指す。",
    )
    pred = model.predict([doc])[0]
    assert [d.id for d in pred.domains][:1] == ["quantum"]
    assert pred.pillars, "every document gets at least one pillar"
    ev = pred.domains[0].evidence
    assert ev, "predicted labels carry evidence"
    for e in ev:
        text = getattr(doc, e.field)
        assert text[e.start : e.end] == e.term


def test_predict_humanities_text_has_no_domain(model) -> None:  # type: ignore[no-untyped-def]
    doc = Document(
        "h", title="中世和歌の注釈史", abstract="本研究は中世の和歌注釈書を比較し、歌学の変遷と古典受容の歴史を文献学的に明らかにする。"
    )
    pred = model.predict([doc])[0]
    assert pred.domains == []
    assert [p.id for p in pred.pillars] == ["science_renaissance"]


def test_predict_evidence_spans_in_original_text(model) -> None:  # type: ignore[no-untyped-def]
    # Half-width katakana and full-width letters change length under NFKC.
    doc = Document("w", abstract="ｶﾞｽﾀｰﾋﾞﾝ①を備えた航空機エンジンのＣＦＤ解析と燃焼器の設計")
    pred = model.predict([doc])[0]
    for label in pred.domains + pred.pillars:
        for e in label.evidence:
            assert doc.abstract[e.start : e.end] == e.term


def test_predict_threshold_and_top_k(model) -> None:  # type: ignore[no-untyped-def]
    doc = Document("t", abstract="洋上風力発電の浮体構造と係留システムを開発し、海洋環境への影響を評価する。")
    everything = model.predict([doc], threshold=0.0)[0]
    assert len(everything.domains) == 17 and len(everything.pillars) == 6
    scores = [d.score for d in everything.domains]
    assert scores == sorted(scores, reverse=True)
    top = model.predict([doc], threshold=0.0, top_k=2)[0]
    assert len(top.domains) == 2 and len(top.pillars) == 2


def test_probabilities_in_range(model) -> None:  # type: ignore[no-untyped-def]
    docs = [Document(str(i), abstract=t) for i, t in enumerate(["ロボットの把持制御", "Coral reef ecology", "がん免疫療法の臨床試験"])]
    proba = model.predict_proba(docs)
    assert proba.shape == (3, 23)
    assert np.all((proba >= 0) & (proba <= 1))


def _small_training_set():  # type: ignore[no-untyped-def]
    from classifier.corpus import load_corpus

    data = load_corpus(load_taxonomy())
    rng = np.random.default_rng(0)
    idx = sorted(rng.choice(len(data), size=min(900, len(data)), replace=False).tolist())
    return data.subset(idx)


def test_training_is_deterministic() -> None:
    data = _small_training_set()
    tax = load_taxonomy()
    cfg = ModelConfig(cv=3, seed=7)
    a = train_model(data.docs, data.domains, data.pillars, tax, cfg)
    b = train_model(data.docs, data.domains, data.pillars, tax, cfg)
    probe = data.docs[:20]
    assert np.allclose(a.predict_proba(probe), b.predict_proba(probe))
    assert np.allclose(a.thresholds, b.thresholds)


def test_training_refuses_label_without_examples() -> None:
    data = _small_training_set()
    tax = load_taxonomy()
    keep = [i for i, d in enumerate(data.domains) if "fusion" not in d]
    sub = data.subset(keep)
    with pytest.raises(TrainingDataError, match="fusion"):
        train_model(sub.docs, sub.domains, sub.pillars, tax, ModelConfig(cv=3))


def test_save_load_round_trip(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = store.save_model(pipeline, {"training_data_sha256": "ab" * 32}, tmp_path)
    meta = json.loads((tmp_path / version / "meta.json").read_text())
    assert meta["taxonomy_version"] == load_taxonomy().version
    assert "scikit-learn" in meta["libraries"]
    assert not list(tmp_path.glob(".tmp-*")), "no temporary directory left behind"
    loaded = store.load_model(version, tmp_path)
    docs = [Document("x", abstract="リチウムイオン電池の固体電解質材料")]
    assert np.allclose(loaded.predict_proba(docs), pipeline.predict_proba(docs))


def test_load_refuses_tampered_model(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = store.save_model(pipeline, {}, tmp_path)
    for name in (store.MODEL_FILE, "scorer.npz"):
        path = tmp_path / version / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="checksum"):
        store.load_pipeline(version, tmp_path)
    with pytest.raises(ModelIntegrityError, match="checksum"):
        store.load_model(version, tmp_path)


def test_load_refuses_other_taxonomy_and_sklearn(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = store.save_model(pipeline, {}, tmp_path)
    meta_path = tmp_path / version / store.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["taxonomy_version"] = "1999.1"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="taxonomy"):
        store.load_model(version, tmp_path)
    meta["taxonomy_version"] = load_taxonomy().version
    meta["libraries"]["scikit-learn"] = "0.24.2"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="scikit-learn"):
        store.load_pipeline(version, tmp_path)
    # Prediction reads arrays and JSON only: another scikit-learn does not matter to it.
    assert store.load_model(version, tmp_path).version == version


def test_activate_and_missing_versions(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelNotFoundError):
        store.load_model(None, tmp_path)
    version = store.save_model(pipeline, {}, tmp_path)
    with pytest.raises(ModelNotFoundError):
        store.activate("nope", tmp_path)
    store.activate(version, tmp_path)
    assert store.active_version(tmp_path) == version
    assert [m["active"] for m in store.list_versions(tmp_path)] == [True]
    shutil.rmtree(tmp_path / version)
    with pytest.raises(ModelNotFoundError):
        store.load_model(None, tmp_path)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": "a", "abstract": "   "}, "empty text"),
        ({"id": "", "abstract": "量子"}, "no id"),
        ({"id": "b", "abstract": "x\x00y"}, "binary"),
        ({"id": "c", "abstract": "あ" * 1_000_001}, "limit"),
        ({"id": "d", "abstract": {"nested": 1}}, "must be text"),
    ],
)
def test_make_document_rejects_bad_records(record: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        make_document(record, "input.jsonl line 3")
    assert "input.jsonl line 3" in str(info.value)


def test_clone_of_keyword_prior() -> None:
    from sklearn.base import clone

    from classifier.features import KeywordPrior

    prior = KeywordPrior({"quantum": ["量子", "qubit"], "space": ["衛星"]})
    cloned = clone(prior)
    assert cloned.get_params() == prior.get_params()
    out = cloned.fit([""]).transform(["量子 qubit 衛星", "qubits only", ""]).toarray()
    assert out.shape == (3, 2) and out[0, 0] > out[0, 1] > 0
    assert out[1].sum() == 0, "an ASCII keyword matches whole words only"
    assert out[2].sum() == 0


def test_load_refuses_older_model_format(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    version = store.save_model(pipeline, {}, tmp_path)
    meta_path = tmp_path / version / store.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["format"] = store.FORMAT - 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="format"):
        store.load_model(version, tmp_path)


def test_default_model_is_current_only_for_same_training_text(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    stale = store.save_model(pipeline, {"default": True, "default_stamp": "0" * 64}, tmp_path, version="stale")
    current = store.save_model(pipeline, {"default": True, "default_stamp": store.corpus_stamp()}, tmp_path, version="current")
    operator = store.save_model(pipeline, {"training_sources": ["mine.csv"]}, tmp_path, version="operator")
    assert not store._default_is_current(stale, tmp_path)
    assert store._default_is_current(current, tmp_path)
    assert store._default_is_current(operator, tmp_path), "an operator's model is never rebuilt behind their back"
    store.activate(current, tmp_path)
    assert store.ensure_default_model(root=tmp_path) == current


def test_scorer_probabilities_equal_the_sklearn_pipeline(pipeline) -> None:  # type: ignore[no-untyped-def]
    # The scorer reproduces TF-IDF, weights, priors, the linear model and calibration without scikit-learn.
    docs = [
        Document(
            "a",
            title="量子センサー",
            abstract="ダイヤモンドNV中心による磁場計測",
            keywords="量子; センサ",
            program="基盤研究(B)",
            field="小区分24010:航空宇宙工学関連",
        ),
        Document(
            "b", abstract="Coral reef monitoring from satellites; computing computers compute", program="NSF Directorate For Geosciences"
        ),
        Document("c", abstract="。。。"),
        Document("d", title="リチウムイオン電池", abstract="固体電解質の材料を作り、示された結果を調べる", keywords="電池、電池; battery"),
    ]
    reference = pipeline.classifier.predict_proba(pipeline.transform(docs))
    assert np.allclose(pipeline.predict_proba(docs), reference, atol=1e-6)
    assert np.allclose(pipeline.predict_proba(docs[1:2]), reference[1:2], atol=1e-6), "one document alone scores as in a batch"


def test_saved_scorer_loads_without_pickle_and_predicts_the_same(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from classifier.scorer import Scorer

    version = store.save_model(pipeline, {}, tmp_path)
    loaded = store.load_model(version, tmp_path)
    assert isinstance(loaded, Scorer) and loaded.version == version
    docs = [Document("x", title="小型衛星の姿勢制御", abstract="リチウムイオン電池の固体電解質材料", keywords="衛星; 電池")]
    assert [p.as_dict() for p in loaded.predict(docs)] == [p.as_dict() for p in pipeline.predict(docs)]
    pipeline = store.load_pipeline(version, tmp_path)
    assert np.allclose(pipeline.predict_proba(docs), loaded.predict_proba(docs))


def test_load_refuses_tampered_scorer_tables(pipeline, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from classifier.scorer import TABLES_FILE

    version = store.save_model(pipeline, {}, tmp_path)
    path = tmp_path / version / TABLES_FILE
    path.write_text(path.read_text(encoding="utf-8").replace('"weight":1.5', '"weight":9.5', 1), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match="checksum"):
        store.load_model(version, tmp_path)


def test_taxonomy_resolve_ids_orders_dedupes_and_reports() -> None:
    tax = load_taxonomy()
    ids, problems = tax.resolve_ids(["宇宙", "quantum", "Space", "warp", "governance"], "domain")
    assert ids == ["quantum", "space"]
    assert [i for i, _ in problems] == [3, 4]
    assert "warp" in problems[0][1] and "is a pillar" in problems[1][1]


def test_scorer_equals_pipeline_with_compounds_and_char_ngrams() -> None:
    # The optional blocks (compound nouns, character n-grams) go through the scorer too.
    from classifier.corpus import load_corpus

    data = load_corpus(load_taxonomy())
    sub = data.subset(list(range(0, len(data), 3)))
    weights = {**ModelConfig().weights, "chars": 0.5}
    model = train_model(sub.docs, sub.domains, sub.pillars, load_taxonomy(), ModelConfig(cv=3, compounds=True, weights=weights))
    docs = [
        Document("a", title="超伝導量子ビット制御", abstract="量子ビット制御の誤り訂正と表面符号", keywords="量子計算"),
        Document("b", abstract="Small satellites for Earth observation", program="SBIR Phase I"),
    ]
    reference = model.classifier.predict_proba(model.transform(docs))
    assert model.scorer().blocks[-1].name == "chars"
    assert np.allclose(model.predict_proba(docs), reference, atol=1e-6)


def test_evidence_is_the_same_alone_and_in_a_chunk(model) -> None:  # type: ignore[no-untyped-def]
    # Explanations are ranked over a whole chunk at once: no document's terms may leak into another's.
    docs = [
        Document(
            "a", title="超伝導量子ビットの誤り訂正", abstract="表面符号による量子誤り訂正を実証する。", keywords="量子計算; 量子ビット"
        ),
        Document("b", abstract="洋上風力発電の浮体構造と係留システムを開発し、海洋環境への影響を評価する。"),
        Document("c", title="中世和歌の注釈史", abstract="歌学の変遷を文献学的に明らかにする。"),
        Document(
            "d",
            title="Small satellites",
            abstract="Constellations of small satellites for Earth observation and launch cost reduction.",
            program="SBIR Phase I",
        ),
        Document("e", abstract="半導体の微細加工と量子ドットを用いた単一光子源を開発し、量子通信に用いる。"),
    ]
    together = model.predict(docs)
    alone = [model.predict([d])[0] for d in docs]
    assert [p.as_dict() for p in together] == [p.as_dict() for p in alone]
    for pred, doc in zip(together, docs, strict=True):
        for label in pred.domains + pred.pillars:
            weights = [e.weight for e in label.evidence]
            assert weights == sorted(weights, reverse=True) and all(w > 0 for w in weights)
            assert len({e.term for e in label.evidence}) == len(label.evidence) <= 5
            for e in label.evidence:
                assert getattr(doc, e.field)[e.start : e.end] == e.term


def test_predictions_are_the_same_with_the_pure_python_morpheme_table(model_root, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Without the compiled speed-up (no C compiler at install) granttag predicts exactly the same.
    import classifier.scorer as scorer_module
    from classifier.columns import PyMorphemeColumns

    docs = [
        Document(
            "a",
            title="超伝導量子ビットの誤り訂正",
            abstract="表面符号による量子誤り訂正を実証し、量子計算を目指す。",
            keywords="量子計算; 量子ビット",
        ),
        Document("b", abstract="洋上風力発電の浮体構造と係留システムを開発し、海洋環境への影響を評価する。"),
        Document(
            "d", title="Small satellites", abstract="Constellations of small satellites for Earth observation.", program="SBIR Phase I"
        ),
    ]
    fresh = store.load_model(root=model_root)
    expected = [p.as_dict(scores=True) for p in fresh.predict(docs)]
    monkeypatch.setattr(scorer_module, "MorphemeColumns", PyMorphemeColumns)
    plain = store.load_model(root=model_root)
    assert all(isinstance(t, PyMorphemeColumns) for t in plain._morpheme_cols)
    assert [p.as_dict(scores=True) for p in plain.predict(docs)] == expected


def test_warm_builds_what_forked_workers_share(model_root) -> None:  # type: ignore[no-untyped-def]
    # `granttag classify` warms the model before forking its workers: the tagger, the
    # part-of-speech table and the keyword automata exist afterwards, and predictions are unchanged.
    fresh = store.load_model(root=model_root)
    doc = Document("a", title="超伝導量子ビット", abstract="量子誤り訂正を実証し、大学の研究力を高める。")
    before = fresh.predict([doc])[0].as_dict(scores=True)
    fresh.warm()
    tokenizer = fresh.tokenizer()
    assert tokenizer._tagger is not None and tokenizer._content is not None and fresh._prior is not None
    assert fresh.predict([doc])[0].as_dict(scores=True) == before


def test_batch_over_worker_processes_matches_one_process_and_leaves_gc_as_it_was(model) -> None:  # type: ignore[no-untyped-def]
    # classify_records forks workers with the parent's objects frozen for the garbage collector;
    # the parent is unfrozen afterwards, also when the caller stops reading early.
    import gc

    from classifier.batch import classify_records
    from classifier.records import RawRecord

    texts = ["超伝導量子ビットの誤り訂正", "洋上風力発電の浮体構造", "", "中世和歌の注釈史", "small satellites for earth observation"] * 3
    records = [RawRecord(f"t line {i}", i, {"id": f"r{i}", "abstract": t}, raw_id=f"r{i}") for i, t in enumerate(texts)]
    threshold = gc.get_threshold()
    one = [o.as_dict() for o in classify_records(model, records, jobs=1, chunk_size=4)]
    two = [o.as_dict() for o in classify_records(model, records, jobs=2, chunk_size=4)]
    assert two == one and len(one) == len(records)
    assert [o["status"] for o in one].count("error") == 3  # the empty texts, reported, not dropped
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == threshold
    stream = classify_records(model, records, jobs=2, chunk_size=4)
    next(stream)
    stream.close()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(("total", "chunk", "jobs"), [(20000, 500, 2), (15, 4, 2), (1, 500, 2), (3000, 500, 4), (999, 100, 3)])
def test_chunks_shrink_at_the_end_and_cover_every_record(total: int, chunk: int, jobs: int) -> None:
    from classifier.batch import chunk_sizes

    sizes = chunk_sizes(total, chunk, jobs)
    assert sum(sizes) == total and all(0 < s <= chunk for s in sizes)
    assert sizes == sorted(sizes, reverse=True)  # full chunks first, smaller ones last
    if total >= 4 * chunk * jobs:
        assert sizes[0] == chunk and sizes[-1] <= max(1, chunk // 10)
