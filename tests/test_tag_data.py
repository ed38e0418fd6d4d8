"""Synthetic project databases for the batch-tagging tests: made-up records, no real project text."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

# Phrases written for these tests; each record draws a few, so the records differ.
TOPICS = [
    ("量子ビット", "量子誤り訂正", "量子コンピュータ"),
    ("深層学習", "ロボット制御", "自律移動"),
    ("半導体", "パワーデバイス", "通信回路"),
    ("再生可能エネルギー", "水素製造", "蓄電池"),
    ("地震", "津波", "防災情報"),
    ("がん", "免疫療法", "再生医療"),
    ("作物", "育種", "スマート農業"),
    ("人工衛星", "ロケット", "宇宙探査"),
    ("海洋観測", "深海", "海洋資源"),
    ("核融合", "プラズマ", "超伝導コイル"),
    ("航空機", "エンジン", "複合材料"),
    ("サイバーセキュリティ", "暗号", "ネットワーク"),
]
FRAMES = [
    "本研究では{a}と{b}を組み合わせ、{c}の実現に向けた基盤技術を開発する。",
    "{a}に関する新しい手法を提案し、{b}の評価を通じて{c}への応用を目指す。",
    "We study {a} and {b} to advance {c} with new experiments.",
    "{a}の高性能化のため、{b}の解析と{c}の実証を行う。",
]


def synthetic_records(n: int, seed: int = 0) -> list[dict[str, str | int]]:
    """Return ``n`` made-up project records with integer ids 1..n."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        topic = TOPICS[rng.randrange(len(TOPICS))]
        a, b, c = rng.sample(topic, 3)
        out.append(
            {
                "id": i,
                "title": f"{a}による{c}の研究 {i}",
                "abstract": rng.choice(FRAMES).format(a=a, b=b, c=c) + f" 課題{i}。",
                "keywords": f"{a}; {b}",
            }
        )
    return out


def make_projects_db(path: Path, n: int, *, bad: dict[int, object] | None = None, seed: int = 0) -> Path:
    """Write a SQLite database with a ``projects`` table of ``n`` synthetic records; ``bad`` replaces abstracts by id."""
    bad = bad or {}
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE projects (id INTEGER PRIMARY KEY, title TEXT, abstract TEXT, keywords TEXT)")
    rows = []
    for r in synthetic_records(n, seed):
        abstract = bad.get(int(r["id"]), r["abstract"])
        title = "" if int(r["id"]) in bad else r["title"]
        keywords = "" if int(r["id"]) in bad else r["keywords"]
        rows.append((r["id"], title, abstract, keywords))
    con.executemany("INSERT INTO projects VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return path


@pytest.mark.parametrize(("n", "seed"), [(1, 0), (50, 1), (1000, 2)])
def test_synthetic_records_distinct_ids(n: int, seed: int) -> None:
    records = synthetic_records(n, seed)
    assert len({r["id"] for r in records}) == n
    assert all(str(r["abstract"]).strip() for r in records)
