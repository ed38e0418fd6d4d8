"""Text analysis: NFKC normalisation and Japanese/English tokenisation with fugashi + unidic-lite.

One path serves Japanese, English and mixed text: MeCab (through fugashi) splits
the whole string; Japanese content words become lemmas, runs of ASCII letters
become lower-cased English stems. Compound nouns and English bigrams are added
as features. The tagger is built lazily in each process and never pickled
(fugashi#54), and MeCab's output is read as one string per document, which is
several times faster than reading features node by node (fugashi#98, issue 2).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

# Light verbs, formal nouns and other words that carry no topic (unidic lemmas).
_JA_STOP = frozenset(
    "為る 成る 有る 居る 出来る 言う 行う 無い 良い 用いる 因る 於く 付く 見る 思う 持つ 得る 来る 行く 呉れる 貰う 置く "
    "事 物 為 等 様 所 上 中 下 方 時 際 後 前 度 点 的 性 化 者 毎 各 本 当 同 其の 此の 其れ 此れ 何 我 我々 "
    "研究 本研究 目的 結果 成果 方法 手法 検討 実施 明らか 可能 必要 重要 様々 多く 多い 高い 新た 新しい 具体 今後 "
    "さらに 更に 又 及び 並びに 若しくは 或いは 即ち 特に 同時 現在 以上 以下 場合 対象 課題 問題 提案".split()
)
_KEEP_POS = frozenset(("名詞", "動詞", "形容詞", "形状詞"))
_COMPOUND_POS = frozenset(("名詞", "接頭辞", "接尾辞"))
_ASCII_WORD = re.compile(r"^[a-z][a-z0-9\-+']*$")
_ASCII_ALNUM = re.compile(r"^[0-9A-Za-z][0-9A-Za-z\-+']*$")
# Whitespace and control characters become a single space, one for one, so offsets are kept.
_SPACE_TABLE = {c: " " for c in range(0, 32)} | {0x7F: " ", 0x85: " ", 0x2028: " ", 0x2029: " "}
_COMBINING_HALFWIDTH = ("\uff9e", "\uff9f")


def normalize(text: str) -> str:
    """Return NFKC-normalised text with control characters replaced by spaces."""
    return unicodedata.normalize("NFKC", text).translate(_SPACE_TABLE)


def normalize_with_offsets(text: str) -> tuple[str, list[int], list[int]]:
    """Normalise ``text`` and map each normalised character back to the original.

    Returns ``(norm, starts, ends)`` where ``text[starts[i]:ends[i]]`` is the
    original of ``norm[i]``. Characters are normalised in clusters (a base
    character with its combining marks) so compositions such as half-width
    ｶﾞ → ガ map to both original characters.
    """
    norm = normalize(text)
    if len(norm) == len(text):
        # NFKC kept the length: in practice each character maps to itself.
        idx = list(range(len(text)))
        return norm, idx, [i + 1 for i in idx]
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    n = len(text)
    while i < n:
        j = i + 1
        while j < n and (unicodedata.combining(text[j]) or text[j] in _COMBINING_HALFWIDTH):
            j += 1
        piece = normalize(text[i:j])
        out.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(out), starts, ends


@dataclass(frozen=True)
class Token:
    """A feature with where it stands in the normalised text."""

    feature: str
    surface: str
    start: int
    end: int


def _stemmer() -> Any:
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def _english_stop() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | {"study", "research", "project", "propose", "proposed", "using", "based"}


class Tokenizer:
    """Japanese/English tokenizer over fugashi + unidic-lite; holds configuration only.

    ``compounds`` adds compound nouns (adjacent noun bigrams and whole runs of
    up to four nouns) and English word bigrams. The MeCab tagger is created on
    first use in each process and dropped when pickled.
    """

    def __init__(self, compounds: bool = True) -> None:
        self.compounds = compounds
        self._tagger: Any = None
        self._stem_cache: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"compounds": self.compounds}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.compounds = state.get("compounds", True)
        self._tagger = None
        self._stem_cache = {}

    def __repr__(self) -> str:
        return f"Tokenizer(compounds={self.compounds})"

    def _get_tagger(self) -> Any:
        if self._tagger is None:
            import fugashi
            import unidic_lite

            # unidic-lite's dicrc sets output-format-type; -O "" clears it so our
            # compact node format (surface, pos1, pos2, lemma) applies.
            args = (
                f'-r /dev/null -d "{unidic_lite.DICDIR}" -O "" '
                r'-F "%m\t%f[0]\t%f[1]\t%f[7]\n" -U "%m\t%f[0]\t%f[1]\t*\n" -E "\n"'
            )
            self._tagger = fugashi.GenericTagger(args)
            global _ENGLISH_STOP
            if _ENGLISH_STOP is None:
                _ENGLISH_STOP = _english_stop()
            self._stem = _stemmer().stemWord
        return self._tagger

    def _english(self, word: str) -> str | None:
        lower = word.lower()
        cached = self._stem_cache.get(lower)
        if cached is not None:
            return cached or None
        if not _ASCII_WORD.match(lower) or lower in _ENGLISH_STOP or len(lower) < 2:  # type: ignore[operator]
            stem = ""
        else:
            stem = self._stem(lower)
        if len(self._stem_cache) < 200_000:
            self._stem_cache[lower] = stem
        return stem or None

    def _morphs(self, norm: str) -> list[tuple[str, str, str, str]]:
        tagger = self._get_tagger()
        out = tagger.parse(norm)
        morphs = []
        for line in out.split("\n"):
            if line:
                parts = line.split("\t")
                if len(parts) == 4:
                    morphs.append((parts[0], parts[1], parts[2], parts[3]))
        return morphs

    def analyze(self, text: str, *, normalized: bool = False) -> list[Token]:
        """Return the tokens of ``text`` with spans in the normalised text.

        ``normalized`` says ``text`` is already the output of :func:`normalize`.
        """
        norm = text if normalized else normalize(text)
        if not norm.strip():
            return []
        tokens: list[Token] = []
        pos = 0
        run: list[Token] = []  # current compound run (surface tokens)
        prev_en: Token | None = None

        def close_run() -> None:
            if self.compounds and len(run) >= 2:
                for a, b in zip(run, run[1:]):
                    tokens.append(Token(a.surface + b.surface, a.surface + b.surface, a.start, b.end))
                if 3 <= len(run) <= 4:
                    surf = "".join(t.surface for t in run)
                    tokens.append(Token(surf, surf, run[0].start, run[-1].end))
            run.clear()

        for surface, pos1, pos2, lemma in self._morphs(norm):
            start = norm.find(surface, pos)
            if start < 0:  # MeCab never rewrites the surface; be safe anyway
                start = pos
            end = start + len(surface)
            pos = end
            if _ASCII_ALNUM.match(surface):
                close_run()
                stem = self._english(surface)
                if stem is None:
                    prev_en = None
                    continue
                tok = Token(stem, surface, start, end)
                tokens.append(tok)
                if self.compounds and prev_en is not None and prev_en.end + 1 >= start:
                    tokens.append(Token(prev_en.feature + " " + stem, norm[prev_en.start : end], prev_en.start, end))
                prev_en = tok
                continue
            prev_en = None
            if pos1 in _COMPOUND_POS and pos2 != "数詞":
                run.append(Token(surface, surface, start, end))
            else:
                close_run()
            if pos1 not in _KEEP_POS or pos2 == "数詞":
                continue
            if lemma == "*" or not lemma:
                lemma = surface
            else:
                dash = lemma.find("-")
                if dash > 0:  # "コンピューター-computer": drop the English gloss
                    lemma = lemma[:dash]
            if lemma in _JA_STOP or surface in _JA_STOP:
                continue
            tokens.append(Token(lemma, surface, start, end))
        close_run()
        return tokens

    def features(self, text: str) -> list[str]:
        """Return the feature strings of ``text`` (the analyzer for a vectorizer)."""
        return [t.feature for t in self.analyze(text)]


_ENGLISH_STOP: frozenset[str] | None = None


class FieldAnalyzer:
    """Callable analyzer for one document field, for ``TfidfVectorizer(analyzer=...)``.

    ``mode`` is "text" (tokens of free text), "keywords" (each keyword whole,
    plus its tokens) or "code" (the value as one categorical feature).
    """

    def __init__(self, mode: str = "text", tokenizer: Tokenizer | None = None) -> None:
        self.mode = mode
        self.tokenizer = tokenizer

    def __call__(self, value: str) -> list[str]:
        if not value:
            return []
        if self.mode == "code":
            return [normalize(value).strip().lower()]
        tokenizer = self.tokenizer or _default_tokenizer()
        if self.mode == "keywords":
            feats: list[str] = []
            for kw in split_keywords(value):
                kwn = normalize(kw).strip().lower()
                if kwn:
                    feats.append("kw=" + kwn)
            feats.extend(tokenizer.features(value))
            return feats
        return tokenizer.features(value)

    def __repr__(self) -> str:
        return f"FieldAnalyzer(mode={self.mode!r})"


_KW_SPLIT = re.compile(r"\s*[;；、,，/|]\s*|\n")


def split_keywords(value: str) -> list[str]:
    """Split a keyword string on ; 、 , / | or newlines."""
    return [k for k in _KW_SPLIT.split(value) if k.strip()]


_DEFAULT: Tokenizer | None = None


def _default_tokenizer() -> Tokenizer:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Tokenizer()
    return _DEFAULT
