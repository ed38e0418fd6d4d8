"""Text analysis: NFKC normalisation and Japanese/English tokenisation with fugashi + unidic-lite.

One path serves Japanese, English and mixed text: MeCab (through fugashi) splits
the whole string; Japanese content words become lemmas, ASCII words become
lower-cased English stems. The tagger is built lazily in each process and never
pickled (fugashi#54). MeCab writes only each morpheme's left context id and
surface, read as one string per field (per-token feature objects run at a
quarter of MeCab's speed, fugashi#98, and formatting lemmas in MeCab doubled its
time: issue 2); what a morpheme means is looked up once per distinct morpheme.
Compound nouns were measured as extra features and dropped: they lowered domain
micro-F1 on the dev set (0.740 with, 0.753 without).
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Any

# Light verbs, formal nouns and other words that carry no topic (unidic lemmas).
_JA_STOP = frozenset(
    "為る 成る 有る 居る 出来る 言う 行う 無い 良い 用いる 因る 於く 付く 見る 思う 持つ 得る 来る 行く 呉れる 貰う 置く "
    "事 物 為 等 様 所 上 中 下 方 時 際 後 前 度 点 的 性 化 者 毎 各 本 当 同 其の 此の 其れ 此れ 何 我 我々 "
    "研究 本研究 目的 結果 成果 方法 手法 検討 実施 明らか 可能 必要 重要 様々 多く 多い 高い 新た 新しい 具体 今後 "
    "さらに 更に 又 及び 並びに 若しくは 或いは 即ち 特に 同時 現在 以上 以下 場合 対象 課題 問題 提案 "
    # Nouns are their surfaces: the formal nouns above as they are usually written.
    "こと もの ため よう ところ とき なか うち ほか ほう かた さま たび まま わけ はず つもり "
    "それぞれ さまざま ほとんど たくさん いずれ これ それ あれ どれ ここ そこ われわれ".split()
)
# Whitespace and control characters become a single space, one for one, so offsets are kept.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")
_COMBINING_HALFWIDTH = ("\uff9e", "\uff9f")
_WIDE = re.compile("[\uff01-\uff5e\u3000]+")


def normalize(text: str) -> str:
    """Return NFKC-normalised text with control characters replaced by spaces."""
    if not unicodedata.is_normalized("NFKC", text):
        # Runs of full-width ASCII (，（）．１２) and the ideographic space are most of what
        # Japanese text needs: normalised run by run they spare the whole-text NFKC, which
        # costs about three times as much (issue 2). NFKC of the result equals NFKC of the
        # text, so the whole-text pass is still made when anything else is left.
        text = _WIDE.sub(_nfkc_match, text)
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
    return _CONTROL.sub(" ", text)


def _nfkc_match(match: re.Match[str]) -> str:
    return unicodedata.normalize("NFKC", match.group())


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


# MeCab writes each morpheme as "<left context id>,<surface> " and nothing else: the
# id is an integer MeCab has at hand, so this output costs little more than its plain
# word splitting (-Owakati), where formatting lemmas and parts of speech (%f[...])
# doubled MeCab's time (issue 2). The output is read by str.split for training and
# by the morpheme table of classifier.columns for prediction. The id says
# the part of speech (the dictionary's left-id.def); what a morpheme's feature is gets
# worked out once per distinct (id, surface).
_KEYED_FORMAT = '-O "" -F "%phl,%m " -U "%phl,%m " -E ""'
# One MeCab line per morpheme, for compound nouns only: pos1, pos2, lemma, surface.
_NODE_FORMAT = r'-O "" -F "%f[0]\t%f[1]\t%f[7]\t%m\n" -U "%f[0]\t%f[1]\t%m\t%m\n" -E ""'
# A letter, digit or kana: what a word has and a run of symbols has not.
_WORD_CHAR = re.compile(r"[^\W_]")
# unidic lemmas of loanwords carry an English gloss: "コンピューター-computer".
_GLOSS = re.compile(r"(?<=.)-[A-Za-z].*")
# Runs of two or more nouns, prefixes and suffixes: compound nouns (量子+ビット+制御).
_NOUN_RUN = re.compile(r"(?:^(?:名詞\t(?!数詞)|接頭辞\t|接尾辞\t)[^\n]*\n){2,}", re.M)
#: Distinct lemmas, and morphemes, a tokenizer remembers the feature of before starting over.
_CACHE_LIMIT = 200_000


def english_stop_words() -> frozenset[str]:
    """Return the English words that are never features (scikit-learn's list and research boilerplate)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    extra = {"study", "research", "project", "propose", "proposed", "using", "based", "use", "used"}
    return frozenset(ENGLISH_STOP_WORDS) | extra | frozenset("abcdefghijklmnopqrstuvwxyz")


class Tokenizer:
    """Japanese/English tokenizer over fugashi + unidic-lite; holds configuration only.

    MeCab splits the whole lower-cased normalised text into morphemes,
    written as ``"<left id>,<surface>"`` and read as one string (issue 2:
    per-token feature objects run at a quarter of MeCab's speed). The
    feature of each distinct morpheme is worked out once, from the morpheme
    alone, and remembered: nouns other than numerals and adjectival nouns
    are their surfaces, verbs and adjectives their lemmas, ASCII words
    Snowball stems; other words and stop words have none. ``compounds``
    adds compound nouns (runs of two to four nouns, written together) as
    extra features; off by default because it lowered dev-set F1.
    ``english_stop`` is the English stop list (default:
    :func:`english_stop_words`; a saved model carries its own, so
    classifying needs no scikit-learn). Taggers are created on first use in
    each process and dropped when pickled (fugashi#54).
    """

    def __init__(self, compounds: bool = False, english_stop: frozenset[str] | None = None) -> None:
        self.compounds = compounds
        self.english_stop = english_stop
        self._tagger: Any = None
        self._node_tagger: Any = None
        self._content: dict[int, tuple[str, list[str]]] | None = None
        self._features: dict[str, str | None] = {}
        self._key_features: dict[str, str | None] = {}
        self._stop: frozenset[str] = frozenset()

    def __getstate__(self) -> dict[str, Any]:
        return {"compounds": self.compounds, "english_stop": self.english_stop}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(compounds=state.get("compounds", False), english_stop=state.get("english_stop"))  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"Tokenizer(compounds={self.compounds})"

    def _setup(self) -> None:
        import snowballstemmer

        if self.english_stop is None:
            self.english_stop = english_stop_words()
        self._stem = snowballstemmer.stemmer("english").stemWord
        self._stop = _JA_STOP | self.english_stop

    def _make_tagger(self, options: str) -> Any:
        # unidic-lite's dicrc sets output-format-type; -O "" in each format clears it.
        import fugashi
        import unidic_lite

        if not self._stop:
            self._setup()
        return fugashi.GenericTagger(f'-r /dev/null -d "{unidic_lite.DICDIR}" {options}')

    def _get_tagger(self) -> Any:
        if self._tagger is None:
            self._tagger = self._make_tagger(_KEYED_FORMAT)
        return self._tagger

    def _get_node_tagger(self) -> Any:
        if self._node_tagger is None:
            self._node_tagger = self._make_tagger(_NODE_FORMAT)
        return self._node_tagger

    def feature(self, lemma: str) -> str | None:
        """The feature of a lemma (gloss stripped, English stemmed), or None for a stop word."""
        feature = self._features.get(lemma, "")
        if feature == "":
            if not self._stop:
                self._setup()
            word = lemma
            if "-" in word:
                word = _GLOSS.sub("", word)
            word = unicodedata.normalize("NFKC", word).lower()
            feature = self._word_feature(word) if word else None
            if len(self._features) >= _CACHE_LIMIT:
                self._features.clear()
            self._features[lemma] = feature
        return feature

    def _word_feature(self, word: str) -> str | None:
        """The feature of a normalised, lower-cased word: None for a stop word, a stem for an English word."""
        if word in self._stop:
            return None
        if word.isascii() and word[:1].isalpha():
            return self._stem(word)  # type: ignore[no-any-return]
        return word

    def key_feature(self, key: str) -> str | None:
        """The feature of one ``"<left id>,<surface>"`` morpheme of :meth:`token_counts`, or None.

        The left id gives the part of speech (the dictionary's left-id.def).
        A noun other than a numeral, or an adjectival noun, is its surface (a
        surface of symbols alone is none); a verb or an adjective is its lemma,
        looked up in the dictionary; anything else has no feature. Either goes
        through :meth:`feature` (stop words, English stems). Each key is worked
        out once, from the key alone, so a word's feature never depends on the
        words around it.
        """
        feature = self._key_features.get(key, "")
        if feature == "":
            feature = self._key_feature(key)
            if len(self._key_features) >= _CACHE_LIMIT:
                self._key_features.clear()
            self._key_features[key] = feature
        return feature

    def _key_feature(self, key: str) -> str | None:
        """Work out the feature of one key (see :meth:`key_feature`), without the cache."""
        if not self._stop:
            self._setup()
        lid, _, surface = key.partition(",")
        kind, _ = self._kinds().get(int(lid), (None, None)) if lid.isdigit() and surface else (None, None)
        if kind == "noun":
            # Unknown symbols share a noun's left id: a word has a letter, digit or kana in it.
            # The surface comes from normalised, lower-cased text: only stop words and stems remain.
            return self._word_feature(surface) if _WORD_CHAR.search(surface) else None
        if kind == "inflected":
            lemma = self._content_lemma(lid, surface)
            return None if lemma is None else self.feature(lemma)
        return None

    def warm(self) -> None:
        """Create this process's tagger and read the part-of-speech table now rather than on first use."""
        self._get_tagger()
        self._kinds()

    def _kinds(self) -> dict[int, tuple[str, list[str]]]:
        if self._content is None:
            import unidic_lite

            self._content = content_kinds(unidic_lite.DICDIR)
        return self._content

    def _content_lemma(self, lid: str, surface: str) -> str | None:
        """The dictionary form of a verb or adjective spelt ``surface`` with left id ``lid``, or None.

        MeCab reads the surface alone (then, if need be, its ten best
        readings); the first reading that is this one word with the part of
        speech and inflection the left id stands for (the dictionary's
        left-id.def) gives the lemma. None when no reading is: a kana form
        too ambiguous to place alone. The tagger that splits documents does
        this too, so the dictionary is mapped into memory once per process.
        """
        want = self._kinds()[int(lid)][1]
        tagger = self._get_tagger()
        for readings in (lambda: [tagger.parseToNodeList(surface)], lambda: tagger.nbestToNodeList(surface, 10)):
            for path in readings():
                if len(path) == 1 and path[0].surface == surface:
                    feature = path[0].feature_raw.split(",")
                    if feature[:6] == want:
                        return surface if path[0].is_unk or len(feature) < 8 else feature[7]
        return None

    def token_counts(self, low: str) -> Counter[str]:
        """Return each morpheme of lower-cased normalised text as ``"<left id>,<surface>"``, with its count.

        ``low`` is ``normalize(text).lower()``. Keys are in order of first
        occurrence and include words with no feature; :meth:`features_of`
        turns them into feature counts and :func:`key_surface` gives a key's
        surface. Not for a tokenizer with ``compounds`` (use :meth:`counts`).
        Empty text gives an empty Counter.
        """
        return Counter(self.morphemes(low))

    def morphemes(self, low: str) -> list[str]:
        """Return the morphemes of lower-cased normalised text in order, as :meth:`token_counts` keys (repeats kept)."""
        return self.parse(low).split()

    def parse(self, low: str) -> str:
        """Return MeCab's output for lower-cased normalised text: the :meth:`morphemes`, each followed by a space."""
        if not low or low.isspace():
            return ""
        return self._get_tagger().parse(low)  # type: ignore[no-any-return]

    def features_of(self, tokens: Counter[str]) -> dict[str, int]:
        """Return the feature counts of :meth:`token_counts`' output."""
        out: dict[str, int] = {}
        feature_of = self.key_feature
        for key, n in tokens.items():
            f = feature_of(key)
            if f is not None:
                out[f] = out.get(f, 0) + n
        return out

    def counts(self, norm: str) -> dict[str, int]:
        """Return each feature of normalised text with how often it occurs.

        Raises nothing; empty text gives {}.
        """
        if self.compounds:
            out: dict[str, int] = {}
            for feature, _ in self.pairs(norm):
                out[feature] = out.get(feature, 0) + 1
            return out
        return self.features_of(self.token_counts(norm.lower()))

    def pairs(self, norm: str) -> list[tuple[str, str]]:
        """Return (feature, surface) for each content word of normalised text, in order.

        Surfaces are lower-cased; the features are those :meth:`counts` counts
        (with ``compounds``, the compound nouns follow the words).
        Raises nothing; empty text gives [].
        """
        if not norm or norm.isspace():
            return []
        low = norm.lower()
        feature_of = self.key_feature
        pairs = [(f, key_surface(key)) for key in self.morphemes(low) if (f := feature_of(key)) is not None]
        if self.compounds:
            out = self._get_node_tagger().parse(low)
            for block in _NOUN_RUN.findall(out + "\n"):
                parts = [line.rsplit("\t", 1)[-1] for line in block.splitlines()]
                if 2 <= len(parts) <= 4 and not all(p.isascii() for p in parts):
                    word = "".join(parts)
                    pairs.append((word, word))
        return pairs

    def features(self, text: str) -> list[str]:
        """Return the feature strings of ``text``, in order."""
        return [f for f, _ in self.pairs(normalize(text))]

    def analyze(self, text: str, *, normalized: bool = False) -> list[Token]:
        """Return the tokens of ``text`` with spans in the normalised text.

        ``normalized`` says ``text`` is already the output of :func:`normalize`.
        """
        norm = text if normalized else normalize(text)
        low = norm.lower()
        if len(low) != len(norm):  # a rare letter whose lower case is longer
            low = norm
        tokens = []
        pos = 0
        for feature, surface in self.pairs(norm):
            start = low.find(surface, pos)
            if start < 0:
                continue
            pos = start + len(surface)
            tokens.append(Token(feature, norm[start:pos], start, pos))
        return tokens


def key_surface(key: str) -> str:
    """The surface of a ``"<left id>,<surface>"`` key of :meth:`Tokenizer.token_counts`."""
    return key.partition(",")[2]


@functools.lru_cache(maxsize=4)
def content_kinds(dicdir: str) -> dict[int, tuple[str, list[str]]]:
    """The left context ids of content words in a MeCab dictionary (its left-id.def), by kind.

    ``"noun"``: nouns other than numerals, and adjectival nouns (unidic's
    名詞 but 数詞, 形状詞), which do not inflect; ``"inflected"``: verbs and
    adjectives (動詞, 形容詞). Each comes with the id's part of speech and
    inflection (its first six fields).
    """
    kinds = {}
    with open(os.path.join(dicdir, "left-id.def"), encoding="utf-8") as fh:
        for line in fh:
            number, _, feature = line.strip().partition(" ")
            pos = feature.split(",")
            if pos[0] in ("動詞", "形容詞"):
                kinds[int(number)] = ("inflected", pos[:6])
            elif pos[0] == "形状詞" or (pos[0] == "名詞" and pos[1:2] != ["数詞"]):
                kinds[int(number)] = ("noun", pos[:6])
    return kinds


_KW_SPLIT = re.compile(r"\s*[;；、,，/|]\s*|\n")


def split_keywords(value: str) -> list[str]:
    """Split a keyword string on ; 、 , / | or newlines."""
    return [k for k in _KW_SPLIT.split(value) if k.strip()]
