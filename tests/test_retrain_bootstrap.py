"""Bootstrap from field codes (issue 6): weak labels through the crosswalk, and `granttag bootstrap` end to end."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from classifier.bootstrap import parse_code, weak_label, weak_labels
from classifier.corpus import load_crosswalk
from classifier.errors import InvalidInputError
from tests.test_retrain import TRAIN, make_split

CROSSWALK = {"21010": ["energy_gx", "ocean"], "27040": ["bio_health"], "01010": []}


@pytest.mark.parametrize(
    "values,code",
    [
        (("21010",), "21010"),
        ((None, "小区分21010:電力工学関連"), "21010"),
        (("小区分０１０１０:哲学",), "01010"),  # full-width digits
        (("理工系",), None),
        ((None, None), None),
        (("1901",), None),
        (("中区分19",), None),
        ((210100,), None),
    ],
)
def test_parse_code_finds_five_digit_code(values: tuple[Any, ...], code: str | None) -> None:
    assert parse_code(*values) == code


@pytest.mark.parametrize(
    "code,unmapped,labels",
    [
        ("21010", "none", (["energy_gx", "ocean"], ["science_renaissance", "strategic_technology"])),
        ("01010", "none", ([], ["science_renaissance"])),
        ("01010", "skip", None),
        ("99999", "none", None),
        (None, "none", None),
    ],
)
def test_weak_label_from_crosswalk(code: str | None, unmapped: str, labels: tuple[list[str], list[str]] | None) -> None:
    assert weak_label(code, CROSSWALK, unmapped) == labels


def kaken_like(n: int) -> list[dict[str, Any]]:
    """Made-up KAKEN-shaped records (no real text): codes cycle through mapped, unmapped, unknown and missing."""
    codes = [
        ("21010", "小区分21010:電力工学関連"),
        ("27040", None),
        ("01010", "小区分01010:哲学および倫理学関連"),
        ("99999", None),
        (None, "理工系"),
    ]
    out = []
    for i in range(n):
        code, section = codes[i % len(codes)]
        out.append(
            {
                "award_number": f"99X{i:05d}",
                "title": f"試験課題 {i}",
                "abstract": f"架空の研究計画 {i} の概要。流体と生体分子の測定を行う。",
                "keywords": ["試験", f"語{i}"],
                "research_category": "基盤研究(C)",
                "review_section": section,
                "review_code": code,
            }
        )
    return out


def test_weak_labels_reads_gzip_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "k.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in kaken_like(50):
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    data, stats = weak_labels([path], CROSSWALK, exclude_ids={"99X00000"})
    assert (stats.read, stats.no_code, stats.code_not_in_crosswalk, stats.labeled) == (50, 10, 10, 29)
    assert len(data) == 29  # one left out by its id
    assert all(d.field == "" for d in data.docs)  # the code is dropped so the model learns from the text
    assert data.domains[0] == ["bio_health"] and data.pillars[0] == ["science_renaissance", "strategic_technology"]
    skipped, stats = weak_labels([path], CROSSWALK, unmapped="skip", limit=5, keep_field=True)
    assert len(skipped) == 5 and stats.unmapped_skipped == 10
    assert all(dm for dm in skipped.domains) and all(d.field for d in skipped.docs)


def test_weak_labels_empty_crosswalk_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps(kaken_like(1)[0], ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="crosswalk maps no field code"):
        weak_labels([path], {})


def test_project_crosswalk_maps_codes() -> None:
    crosswalk = load_crosswalk()
    assert len(crosswalk) > 300
    assert weak_label("01010", crosswalk) == ([], ["science_renaissance"])
    assert any(domains for domains in crosswalk.values())


def test_cli_bootstrap_trains_with_labeled_data_and_gates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from classifier import store
    from classifier.datastore import DataStore
    from granttag.cli import main

    (tmp_path / "split").mkdir()
    split = make_split(tmp_path / "split")
    models, data = tmp_path / "models", tmp_path / "data"
    models.mkdir()
    for k, v in {"GRANTTAG_MODELS_DIR": str(models), "GRANTTAG_DATA_DIR": str(data), "GRANTTAG_RETRAIN_CALIBRATION_CV": "2"}.items():
        monkeypatch.setenv(k, v)
    ds = DataStore(data)
    ds.set_active("corpus", False)
    ds.add(split["train"], "labeled")
    path = tmp_path / "kaken.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kaken_like(60)), encoding="utf-8")
    weak_out = tmp_path / "weak.jsonl"
    crosswalk = Path(__file__).resolve().parent.parent / "labels" / "crosswalk_kaken.yaml"
    res = CliRunner().invoke(
        main, ["bootstrap", "--field-crosswalk", str(crosswalk), str(path), "--save-weak", str(weak_out)], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert "60 records read: 36 weakly labeled" in res.output
    version = res.stdout.strip().splitlines()[-1]
    meta = store.read_meta(version, models)
    assert meta["training_records"] == TRAIN + 36
    assert store.active_version(models) is None  # no holdout: saved, not activated
    assert len(weak_out.read_text(encoding="utf-8").splitlines()) == 36
    res = CliRunner().invoke(
        main,
        ["bootstrap", "--field-crosswalk", str(crosswalk), str(path), "--holdout", str(split["holdout"]), "--limit", "20"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "accepted and activated" in res.output
    active = store.active_version(models)
    assert active is not None and store.read_meta(active, models)["data_sources"][-1]["records"] == 20
