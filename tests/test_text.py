"""Text analysis: normalisation, offsets and Japanese/English/mixed tokenisation."""

from __future__ import annotations

import pickle

import pytest

from classifier.text import Tokenizer, normalize, normalize_with_offsets, split_keywords

TOK = Tokenizer()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("量子コンピュータの誤り訂正", ["量子", "コンピュータ", "誤り", "訂正"]),  # a noun is its surface
        ("深層学習による画像診断", ["深層", "学習", "画像", "診断"]),
        ("Deep learning for satellites", ["deep", "learn", "satellit"]),
        ("ＡＩと５Ｇ通信", ["ai", "通信"]),  # full-width ASCII folds to ai
        ("GaNパワーデバイスの開発", ["gan", "パワー", "デバイス", "開発"]),
        ("医療🚀AI", ["医療", "ai"]),  # emoji is dropped, its neighbours kept
        ("", []),
        ("   \n\t ", []),
        ("の、は。", []),  # particles and punctuation only
    ],
)
def test_tokenizer_features(text: str, expected: list[str]) -> None:
    feats = TOK.features(text)
    for token in expected:
        assert token in feats, (token, feats)
    if not expected:
        assert feats == []


def test_tokenizer_keeps_one_and_two_character_words() -> None:
    feats = TOK.features("鉄と銅の材料")
    assert "鉄" in feats and "銅" in feats and "材料" in feats


def test_tokenizer_drops_light_verbs_and_stopwords() -> None:
    feats = TOK.features("本研究では解析を行う。This is the study of the method.")
    assert "為る" not in feats and "行う" not in feats
    assert "the" not in feats and "is" not in feats


def test_tokenizer_spans_point_at_surface() -> None:
    text = normalize("本研究では超伝導量子ビットを用いる")
    for tok in TOK.analyze(text, normalized=True):
        assert text[tok.start : tok.end] == tok.surface


def test_tokenizer_pickles_without_tagger() -> None:
    TOK.features("量子")  # builds the tagger
    clone = pickle.loads(pickle.dumps(TOK))
    assert clone._tagger is None and TOK._tagger is not None
    assert clone.features("量子ビット") == TOK.features("量子ビット")
    assert clone.counts("量子ビット") == TOK.counts("量子ビット")


@pytest.mark.parametrize(
    "text",
    [
        "リチウムイオン電池の固体電解質とゲノム編集",
        "Quantum computing with superconducting qubits; computers compute.",
        "本研究ではＡＩ（深層学習）を用いてＤＮＡの配列を解析した。Deep learning for DNA.",
        "示された結果を基づいて、材料を作り、調べる",
        "",
    ],
)
def test_tokenizer_counts_match_features(text: str) -> None:
    # The fast counting path (no surfaces) and the surface path give the same features.
    from collections import Counter

    assert TOK.counts(normalize(text)) == dict(Counter(TOK.features(text)))


def test_tokenizer_strips_loanword_glosses() -> None:
    # unidic writes loanword lemmas as "イオン-Ion"; the feature is the word alone.
    assert TOK.feature("イオン-Ion") == "イオン"
    assert TOK.features("リチウムイオン電池とゲノム") == ["リチウム", "イオン", "電池", "ゲノム"]


def test_tokenizer_nouns_are_surfaces_and_verbs_lemmas() -> None:
    # Nouns do not inflect: the surface is the feature (no dictionary lookup per new noun).
    # Verbs and adjectives are looked up: every form gives the dictionary form.
    feats = TOK.features("材料を作り、試料を作った。美しく、美しい")
    assert feats.count("作る") == 2 and feats.count("美しい") == 2
    assert "材料" in feats and "試料" in feats
    assert TOK.features("こととものとため") == []  # formal nouns in kana are stop words too


@pytest.mark.parametrize(
    "original, norm",
    [
        ("ＡＢＣ１２３", "ABC123"),
        ("ｶﾞｽタービン", "ガスタービン"),
        ("①量子", "1量子"),
        ("㈱量子", "(株)量子"),
        ("行1\n行2\t", "行1 行2 "),
    ],
)
def test_normalize_with_offsets_maps_back(original: str, norm: str) -> None:
    out, starts, ends = normalize_with_offsets(original)
    assert out == norm
    assert len(starts) == len(ends) == len(out)
    # Every normalised character maps to a non-empty original range, in order.
    assert all(0 <= s < e <= len(original) for s, e in zip(starts, ends))
    assert starts == sorted(starts)


def test_normalize_with_offsets_composed_kana() -> None:
    out, starts, ends = normalize_with_offsets("ｶﾞｽ")
    assert out == "ガス"
    assert (starts[0], ends[0]) == (0, 2)  # ガ came from ｶ + ﾞ


def test_analyse_documents_keeps_whole_keywords() -> None:
    from classifier.documents import Document
    from classifier.features import COLUMNS, analyse_documents

    matrix, analysed = analyse_documents([Document("k", abstract="x", keywords="量子センシング; ダイヤモンドNV中心、磁気計測")], TOK)
    feats = matrix[0, COLUMNS["keywords"]]
    assert "kw=量子センシング" in feats
    assert "kw=ダイヤモンドnv中心" in feats
    assert "量子" in feats
    assert analysed[0].counts["keywords"]["量子"] == 1


def test_tokenizer_numbers_and_single_letters_dropped() -> None:
    feats = TOK.features("2023年に5G通信で3倍の速度を得た")
    assert "2023" not in feats and "g" not in feats and "3" not in feats
    assert "通信" in feats and "速度" in feats


def test_split_keywords() -> None:
    assert split_keywords("a; b、c,d / e") == ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize(
    "text, compound",
    [("量子ビット制御の研究", "量子ビット制御"), ("超伝導量子回路", "超伝導量子回路"), ("ガスタービンの効率", "ガスタービン")],
)
def test_tokenizer_compounds_on_request(text: str, compound: str) -> None:
    assert compound in Tokenizer(compounds=True).features(text)
    assert compound not in TOK.features(text)


@pytest.mark.parametrize(
    "text, absent, present",
    [
        ("ペロブスカイト太陽電池の高効率化", "化ける", "ペロブスカイト"),  # 化 here is a suffix, not the verb
        ("新たな知見を得た", "得", "知見"),  # 得 here is the verb 得る (a stop word), not the noun
        ("x-ray; imaging [a] _ ┃ 量子", ";", "量子"),  # unknown symbols share a noun's left id
    ],
)
def test_tokenizer_reads_part_of_speech_in_context(text: str, absent: str, present: str) -> None:
    feats = Tokenizer().features(text)
    assert absent not in feats and present in feats, feats


def test_tokenizer_features_do_not_depend_on_what_came_before() -> None:
    # Each morpheme's feature is worked out once per process and remembered:
    # a warmed tokenizer and a fresh one give the same features.
    warm = Tokenizer()
    for text in ("化ける狐", "得をする", "方が良い", "コンピュータ方式"):
        warm.features(text)
    text = "高効率化の方式により新たな知見を得た。コンピュータで計算する"
    assert warm.features(text) == Tokenizer().features(text)


def test_tokenizer_key_table_stays_under_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The per-process table of morpheme features is capped: it starts over when full, and
    # a key's feature is the same whether it was remembered or worked out again.
    import classifier.text as text

    monkeypatch.setattr(text, "_CACHE_LIMIT", 8)
    tok = Tokenizer()
    keys = tok.morphemes("量子ビットの誤り訂正と表面符号") + tok.morphemes("洋上風力発電の浮体構造と係留システムを開発する")
    first = [tok.key_feature(k) for k in keys]
    assert len(tok._key_features) <= 8
    assert [tok.key_feature(k) for k in keys] == first == [Tokenizer().key_feature(k) for k in keys]
    assert first[next(i for i, k in enumerate(keys) if k.endswith(",風力"))] == "風力"
    assert first[next(i for i, k in enumerate(keys) if k.endswith(",開発"))] == "開発"


@pytest.mark.parametrize(
    "text",
    [
        "量子（ＱＵＡＮＴＵＭ）計算，１２３％．",
        "ＡＢ\u0301Ｃ",  # a combining mark after a full-width letter: composes once folded
        "①②　ｶﾞｽﾀｰﾋﾞﾝ～Ａ",  # circled digits and half-width katakana need the whole-text pass
        "ﬁne ㈱ Ｘ\u3000Ｙ",
        "already normal テキスト",
        "行1\n行2\t（注）",
    ],
)
def test_normalize_equals_nfkc_with_control_characters_as_spaces(text: str) -> None:
    import unicodedata

    from classifier.text import _CONTROL

    assert normalize(text) == _CONTROL.sub(" ", unicodedata.normalize("NFKC", text))
