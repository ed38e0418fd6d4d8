"""The prediction path of a trained model in plain arrays: no scikit-learn, no SciPy, no pickle (issue 2).

Training fits scikit-learn objects (:mod:`classifier.features`,
:mod:`classifier.estimators`); what prediction needs of them is small: each
feature block's vocabulary, IDF and weight, the keyword-prior tables, the
linear coefficients, the Platt calibration and the thresholds.
:meth:`Scorer.from_model` reads those off a fitted model once;
:meth:`Scorer.save` writes them as an ``.npz`` (loaded with
``allow_pickle=False``) and a JSON file, both under the version's SHA-256
manifest. Classifying then starts without importing scikit-learn (about a
second of every command's start-up) and computes a whole chunk of documents
with a few NumPy operations. A test checks that its probabilities equal the
scikit-learn pipeline's.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classifier.analysis import (
    TEXT_FIELDS,
    Analysed,
    FieldCodeAnalyzer,
    PriorMatcher,
    ProgramAnalyzer,
    analyse_document,
    keyword_features,
)
from classifier.columns import MorphemeColumns, count_columns
from classifier.documents import Document
from classifier.errors import ModelIntegrityError
from classifier.text import Tokenizer, english_stop_words, key_surface, normalize_with_offsets

ARRAYS_FILE = "scorer.npz"
TABLES_FILE = "scorer.json"

#: The feature blocks this scorer reproduces (classifier.features.build_features).
_BLOCKS = frozenset({"title", "abstract", "keywords", "program", "field", "prior", "chars"})
_ASCII_WORD_END = re.compile(r"[a-z0-9]*")
#: Distinct morphemes a text block remembers the column of before starting over.
_MORPHEME_CACHE_LIMIT = 200_000


@dataclass(slots=True)
class Evidence:
    """A term that raised a label's score, with its place in the original field text."""

    term: str
    field: str
    start: int
    end: int
    weight: float

    def as_dict(self) -> dict[str, Any]:
        return {"term": self.term, "field": self.field, "start": self.start, "end": self.end, "weight": round(self.weight, 4)}


@dataclass
class LabelScore:
    """One predicted label with its calibrated probability and evidence."""

    id: str
    score: float
    evidence: list[Evidence] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 4), "evidence": [e.as_dict() for e in self.evidence]}


@dataclass
class Prediction:
    """The labels predicted for one document, highest score first."""

    id: str
    domains: list[LabelScore]
    pillars: list[LabelScore]
    scores: dict[str, float]
    model_version: str

    def as_dict(self, scores: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "domains": [d.as_dict() for d in self.domains],
            "pillars": [p.as_dict() for p in self.pillars],
            "model_version": self.model_version,
        }
        if scores:
            out["scores"] = {k: round(v, 4) for k, v in self.scores.items()}
        return out


@dataclass
class Block:
    """One feature block: its columns ``offset:offset+size``, weight and vocabulary (None for the prior)."""

    name: str
    offset: int
    size: int
    weight: float
    terms: list[str] | None = None
    params: dict[str, Any] = field(default_factory=dict)


class Scorer:
    """A trained model's prediction path: analysis, TF-IDF, linear scores, calibration, thresholds, evidence.

    Build it with :meth:`from_model` (from a fitted :class:`classifier.model.Model`)
    or :meth:`load` (from a saved version). It answers the same questions as
    the model: ``predict``, ``predict_proba``, ``decide``, ``label_ids``,
    ``thresholds``. Not thread-safe per instance only in that its caches fill
    on first use; filling them twice is harmless.
    """

    def __init__(self, tables: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.domain_ids: list[str] = list(tables["domain_ids"])
        self.pillar_ids: list[str] = list(tables["pillar_ids"])
        self.taxonomy_version: str = tables["taxonomy_version"]
        self.config: dict[str, Any] = dict(tables.get("config") or {})
        self.prior_keywords: dict[str, list[str]] = {k: list(v) for k, v in (tables.get("prior_keywords") or {}).items()}
        self.version = str(tables.get("version") or "unsaved")
        self.tables = tables
        self.blocks = [Block(**b) for b in tables["blocks"]]
        self.coef_t = np.ascontiguousarray(arrays["coef_t"], dtype=np.float64)
        self.intercept = np.asarray(arrays["intercept"], dtype=np.float64)
        self.calibration = np.asarray(arrays["calibration"], dtype=np.float64)
        self._thresholds = np.asarray(arrays["thresholds"], dtype=np.float64)
        self.idf = np.asarray(arrays["idf"], dtype=np.float64)
        n_features = sum(b.size for b in self.blocks)
        k = len(self.domain_ids) + len(self.pillar_ids)
        if self.coef_t.shape != (n_features, k) or self.idf.shape != (n_features,) or self._thresholds.shape != (k,):
            raise ModelIntegrityError(f"model {self.version}: its arrays do not fit its feature tables; retrain it")
        # Per column: block index, whether it is a TF-IDF column (else a log-count prior column), and its weight.
        col_block = np.repeat(np.arange(len(self.blocks)), [b.size for b in self.blocks])
        self._tfidf = np.array([b.name != "prior" for b in self.blocks])[col_block]
        self._weight = np.array([b.weight for b in self.blocks], dtype=np.float64)[col_block]
        self._vocab: list[dict[str, int] | None] = [
            None if b.terms is None else {t: b.offset + j for j, t in enumerate(b.terms)} for b in self.blocks
        ]
        self._morpheme_cols: list[Any] = [MorphemeColumns() for _ in self.blocks]
        self._value_cols: list[dict[str, list[tuple[int, float]]]] = [{} for _ in self.blocks]
        self._field_cols = {block.name: self._morpheme_cols[b] for b, block in enumerate(self.blocks) if block.name in TEXT_FIELDS}
        self._label_index = {label: j for j, label in enumerate(self.domain_ids + self.pillar_ids)}
        self._tokenizer: Tokenizer | None = None
        self._program = ProgramAnalyzer()
        self._field = FieldCodeAnalyzer(tables.get("crosswalk") or {})
        self._prior: PriorMatcher | None = None
        self._chars: Any = None
        self._names: list[tuple[str, str]] | None = None
        self._prior_words: dict[str, list[str]] | None = None

    # --- building, saving, loading --------------------------------------
    @classmethod
    def from_model(cls, model: Any) -> Scorer:
        """Read the prediction tables off a fitted :class:`classifier.model.Model`.

        Raises ModelIntegrityError for a feature block this scorer cannot
        reproduce (a TF-IDF block with other settings than training uses).
        """
        ct = model.features
        weights = ct.transformer_weights or {}
        blocks: list[dict[str, Any]] = []
        idf_parts: list[np.ndarray] = []
        prior: dict[str, Any] = {}
        for name, transformer, _ in ct.transformers_:
            if isinstance(transformer, str):  # "drop" (the remainder)
                continue
            span = ct.output_indices_[name]
            size = span.stop - span.start
            block: dict[str, Any] = {"name": name, "offset": span.start, "size": size, "weight": float(weights.get(name, 1.0))}
            if name not in _BLOCKS:
                raise ModelIntegrityError(f"model {model.version}: feature block {name!r} is unknown to this granttag; retrain it")
            if name == "prior":
                block["terms"] = None
                prior = {"labels": list(transformer.labels_), "crosswalk_weight": float(transformer.crosswalk_weight)}
                idf_parts.append(np.ones(size))
            else:
                if not (transformer.sublinear_tf and transformer.use_idf and transformer.norm == "l2"):
                    raise ModelIntegrityError(f"model {model.version}: block {name!r} uses TF-IDF settings the scorer does not reproduce")
                block["terms"] = [str(t) for t in transformer.get_feature_names_out()]
                if name == "chars":
                    block["params"] = {"ngram_range": list(transformer.ngram_range), "lowercase": bool(transformer.lowercase)}
                idf_parts.append(np.asarray(transformer.idf_, dtype=np.float64))
            blocks.append(block)
        crosswalk = {}
        for _, transformer, _ in ct.transformers_:
            if getattr(transformer, "crosswalk", None):
                crosswalk = dict(transformer.crosswalk)
            elif isinstance(getattr(transformer, "analyzer", None), FieldCodeAnalyzer):
                crosswalk = crosswalk or dict(transformer.analyzer.crosswalk)
        tokenizer = model.tokenizer()
        tables = {
            "version": model.version,
            "domain_ids": list(model.domain_ids),
            "pillar_ids": list(model.pillar_ids),
            "taxonomy_version": model.taxonomy_version,
            "config": model.config,
            "prior_keywords": model.prior_keywords,
            "prior": prior,
            "crosswalk": crosswalk,
            "tokenizer": {"compounds": tokenizer.compounds, "english_stop": sorted(tokenizer.english_stop or english_stop_words())},
            "blocks": blocks,
        }
        clf = model.classifier
        arrays = {
            "coef_t": np.ascontiguousarray(np.asarray(clf.coef_, dtype=np.float64).T),
            "intercept": np.asarray(clf.intercept_, dtype=np.float64),
            "calibration": np.asarray(clf.calibration_, dtype=np.float64),
            "thresholds": np.asarray(clf.thresholds_, dtype=np.float64),
            "idf": np.concatenate(idf_parts) if idf_parts else np.zeros(0),
        }
        return cls(tables, arrays)

    def save(self, directory: Path) -> list[str]:
        """Write the scorer's two files into ``directory``; return their names."""
        arrays = {
            "coef_t": self.coef_t,
            "intercept": self.intercept,
            "calibration": self.calibration,
            "thresholds": self._thresholds,
            "idf": self.idf,
        }
        with (directory / ARRAYS_FILE).open("wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        tables = {**self.tables, "version": self.version}
        (directory / TABLES_FILE).write_text(json.dumps(tables, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
        return [ARRAYS_FILE, TABLES_FILE]

    @classmethod
    def load(cls, directory: Path) -> Scorer:
        """Read a scorer written by :meth:`save`; the caller has checked the files' hashes.

        Raises ModelIntegrityError when a file is unreadable or incomplete.
        """
        try:
            tables = json.loads((directory / TABLES_FILE).read_text(encoding="utf-8"))
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("coef_t", "intercept", "calibration", "thresholds", "idf")}
            return cls(tables, arrays)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelIntegrityError(f"{directory}: the model's tables cannot be read ({exc}); retrain it") from exc

    # --- the model's questions -------------------------------------------
    @property
    def label_ids(self) -> list[str]:
        """Domain ids then pillar ids, the column order of scores."""
        return self.domain_ids + self.pillar_ids

    @property
    def thresholds(self) -> np.ndarray:
        """The tuned decision threshold of each label (probability scale)."""
        return self._thresholds

    def tokenizer(self) -> Tokenizer:
        """Return this model's tokenizer (created once per process)."""
        if self._tokenizer is None:
            spec = self.tables.get("tokenizer") or {}
            stop = spec.get("english_stop")
            self._tokenizer = Tokenizer(
                compounds=bool(spec.get("compounds", False)), english_stop=frozenset(stop) if stop is not None else None
            )
        return self._tokenizer

    def warm(self) -> None:
        """Build now what the first prediction would build: the tagger, the part-of-speech table and the keyword automata.

        Called before worker processes are forked, so that they share these
        instead of each building its own (about 50 ms apiece).
        """
        self.tokenizer().warm()
        self._prior_matcher()
        for words in self._prior_keyword_lists().values():
            if words:
                _keyword_matcher(tuple(words))

    def _prior_matcher(self) -> PriorMatcher:
        if self._prior is None:
            spec = self.tables.get("prior") or {}
            self._prior = PriorMatcher(
                list(spec.get("labels") or []),
                self.prior_keywords,
                self.tables.get("crosswalk") or {},
                float(spec.get("crosswalk_weight", 1.0)),
            )
        return self._prior

    def _char_features(self, text: str, params: dict[str, Any]) -> list[str]:
        # The optional character n-gram block: scikit-learn's own analyzer, imported only for models that use it.
        if self._chars is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._chars = TfidfVectorizer(
                analyzer="char", ngram_range=tuple(params["ngram_range"]), lowercase=params["lowercase"]
            ).build_analyzer()
        return list(self._chars(text))

    def _entries(self, docs: list[Document], analysed: list[Analysed]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return the (column, count, segment) entries of analysed ``docs``, block by block.

        The segment of an entry is ``row * len(blocks) + block``; column -1
        is a word with no feature or one outside the vocabulary. A text block
        counts the columns of the chunk's MeCab output in one pass
        (:func:`classifier.columns.count_columns`): each distinct morpheme's
        column is worked out once per process and kept in a
        :data:`~classifier.columns.MorphemeColumns` table (``_morpheme_cols``). Program names and field codes
        repeat across records and are mapped once per distinct value. Two
        morphemes may share a feature (a stem, a spelling); :meth:`_score`
        adds such entries up.
        """
        nb = len(self.blocks)
        rows = np.arange(len(docs), dtype=np.intp) * nb
        tokenizer = self.tokenizer()
        cols: list[int] = []
        counts: list[float] = []
        segs: list[int] = []
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

        def add(found: list[tuple[int, float]], seg: int) -> None:
            for c, n in found:
                cols.append(c)
                counts.append(n)
                segs.append(seg)

        for b, block in enumerate(self.blocks):
            vocab = self._vocab[b]
            if block.name == "prior":
                matcher = self._prior_matcher()
                for i, (doc, a) in enumerate(zip(docs, analysed, strict=True)):
                    add([(block.offset + j, n) for j, n in matcher.counts(a.text, doc.field).items()], i * nb + b)
                continue
            assert vocab is not None
            if block.name in TEXT_FIELDS:
                parts.append(self._token_entries(b, block.name, vocab, analysed, rows, tokenizer))
                if block.name == "keywords":
                    for i, a in enumerate(analysed):
                        if a.norm["keywords"]:
                            feats = keyword_features(a.norm["keywords"])
                            add([(c, n) for f, n in feats.items() if (c := vocab.get(f)) is not None], i * nb + b)
            elif block.name in ("program", "field"):
                memo = self._value_cols[b]
                analyzer: Any = self._program if block.name == "program" else self._field
                for i, doc in enumerate(docs):
                    value = getattr(doc, block.name)
                    hit = memo.get(value)
                    if hit is None:
                        if len(memo) > _MORPHEME_CACHE_LIMIT:
                            memo.clear()
                        hit = memo[value] = [(c, float(n)) for f, n in Counter(analyzer(value)).items() if (c := vocab.get(f)) is not None]
                    add(hit, i * nb + b)
            else:
                for i, a in enumerate(analysed):
                    feats = Counter(self._char_features(a.text, block.params))
                    add([(c, n) for f, n in feats.items() if (c := vocab.get(f)) is not None], i * nb + b)
        parts.append((np.asarray(cols, dtype=np.intp), np.asarray(counts, dtype=np.float64), np.asarray(segs, dtype=np.intp)))
        return tuple(np.concatenate(x) for x in zip(*parts, strict=True))  # type: ignore[return-value]

    def _token_entries(
        self, b: int, name: str, vocab: dict[str, int], analysed: list[Analysed], rows: np.ndarray, tokenizer: Tokenizer
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries of text field ``name`` (block ``b``) of every document of the chunk, one per (document, column)."""
        if tokenizer.compounds:  # the tokens are features already
            found = [
                (i, c, n) for i, a in enumerate(analysed) for f, n in Counter(a.mecab[name]).items() if (c := vocab.get(f)) is not None
            ]
            i_, c_, n_ = zip(*found, strict=True) if found else ((), (), ())
            return np.asarray(c_, dtype=np.intp), np.asarray(n_, dtype=np.float64), rows[np.asarray(i_, dtype=np.intp)] + b
        table = self._morpheme_cols[b]
        if len(table) > _MORPHEME_CACHE_LIMIT:
            table.clear()
        get = vocab.get

        def resolve(key: str) -> int:
            # Worked out once per distinct morpheme and process; the table remembers it.
            return get(tokenizer.key_feature(key), -1)  # type: ignore[arg-type]

        docs, cols, counts = count_columns(table, [a.mecab[name] for a in analysed], self.coef_t.shape[0], resolve)
        return cols.astype(np.intp), counts, rows[docs] + b

    def _score(self, docs: list[Document]) -> tuple[list[Analysed], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Analyse ``docs``; return their analyses, calibrated probabilities, and the per-entry columns, contributions and row starts."""
        tokenizer = self.tokenizer()
        analysed = [analyse_document(doc, tokenizer, for_prediction=True) for doc in docs]
        col, n, seg = self._entries(docs, analysed)
        known = col >= 0
        if not known.all():
            col, n, seg = col[known], n[known], seg[known]
        # Add up the entries of one column in one segment (two morphemes with one feature);
        # sorted by (segment, column).
        _, first, inverse = np.unique(seg * self.coef_t.shape[0] + col, return_index=True, return_inverse=True)
        n = np.bincount(inverse, weights=n, minlength=len(first)).astype(np.float64, copy=False)
        col, seg = col[first], seg[first]
        row_starts = np.searchsorted(seg // len(self.blocks), np.arange(len(docs) + 1))
        tfidf = self._tfidf[col]
        # TF-IDF blocks: (1 + log tf) * idf, then unit length per document and block
        # (TfidfVectorizer with sublinear_tf, norm="l2"); the prior block: log(1 + count).
        value = np.where(tfidf, (1.0 + np.log(np.maximum(n, 1.0))) * self.idf[col], np.log1p(n))
        if len(seg):
            norms = np.sqrt(np.bincount(seg, weights=np.where(tfidf, value * value, 0.0), minlength=int(seg.max()) + 1))
            value = np.where(tfidf, value / np.where(norms[seg] > 0, norms[seg], 1.0), value)
        value *= self._weight[col]
        contrib = self.coef_t[col] * value[:, None]
        scores = np.zeros((len(docs), self.coef_t.shape[1]))
        filled = np.flatnonzero(row_starts[1:] > row_starts[:-1])
        if len(filled):
            scores[filled] = np.add.reduceat(contrib, row_starts[:-1][filled], axis=0)
        decision = scores + self.intercept
        proba = 1.0 / (1.0 + np.exp(decision * self.calibration[:, 0] + self.calibration[:, 1]))
        return analysed, proba, col, contrib, row_starts

    def predict_proba(self, docs: list[Document]) -> np.ndarray:
        """Return calibrated probabilities, shape (n_docs, n_labels)."""
        if not docs:
            return np.zeros((0, len(self.label_ids)))
        return self._score(docs)[1]

    def decide(self, proba: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Return the 0/1 decisions for ``proba``; every row gets at least one pillar."""
        cut = self.thresholds if threshold is None else np.full(proba.shape[1], float(threshold))
        yes = proba >= cut
        nd = len(self.domain_ids)
        if yes.shape[1] > nd:
            empty = ~yes[:, nd:].any(axis=1)
            best = proba[:, nd:].argmax(axis=1)
            yes[np.flatnonzero(empty), nd + best[empty]] = True
        return yes

    def predict(
        self,
        docs: list[Document],
        *,
        explain: bool = True,
        top_terms: int = 5,
        threshold: float | None = None,
        top_k: int | None = None,
    ) -> list[Prediction]:
        """Classify ``docs``; return one Prediction each, labels highest score first.

        ``threshold`` overrides every tuned threshold; ``top_k`` keeps at most
        that many labels of each kind; ``explain`` adds evidence terms, at
        most ``top_terms`` a label.
        """
        if not docs:
            return []
        analysed, proba, col, contrib, row_starts = self._score(docs)
        yes = self.decide(proba, threshold)
        ids = self.label_ids
        rows = proba.tolist()
        # Per kind, the picked labels of every row, highest score first (stable: ties keep the label order).
        nd = len(self.domain_ids)
        ranked = []
        for part in (slice(0, nd), slice(nd, len(ids))):
            chosen = yes[:, part]
            order = np.argsort(-np.where(chosen, proba[:, part], -1.0), axis=1, kind="stable") + part.start
            count = chosen.sum(axis=1)
            if top_k is not None:
                count = np.minimum(count, top_k)
            ranked.append((order.tolist(), count.tolist()))
        (d_order, d_count), (p_order, p_count) = ranked
        picks: list[tuple[list[LabelScore], list[LabelScore]]] = []
        for i, row in enumerate(rows):
            domains = [LabelScore(ids[j], row[j]) for j in d_order[i][: d_count[i]]]
            pillars = [LabelScore(ids[j], row[j]) for j in p_order[i][: p_count[i]]]
            picks.append((domains, pillars))
        if explain:
            self._explain(docs, analysed, col, contrib, row_starts, [d + p for d, p in picks], top_terms)
        return [
            Prediction(doc.id, domains, pillars, dict(zip(ids, rows[i], strict=True)), self.version)
            for i, (doc, (domains, pillars)) in enumerate(zip(docs, picks, strict=True))
        ]

    # --- explanations -------------------------------------------------
    def _feature_names(self) -> list[tuple[str, str]]:
        if self._names is None:
            names: list[tuple[str, str]] = []
            spec = self.tables.get("prior") or {}
            for block in self.blocks:
                terms = block.terms if block.terms is not None else ["prior=" + label for label in spec.get("labels") or []]
                names.extend((block.name, t) for t in terms)
            self._names = names
        return self._names

    def _prior_keyword_lists(self) -> dict[str, list[str]]:
        # Longest first, ties by spelling: a set's order changes with the hash seed of each process.
        if self._prior_words is None:
            self._prior_words = {
                label: sorted({w.lower() for w in words if w.strip()}, key=lambda w: (-len(w), w))
                for label, words in self.prior_keywords.items()
            }
        return self._prior_words

    def _explain(
        self,
        docs: list[Document],
        analysed: list[Analysed],
        col: np.ndarray,
        contrib: np.ndarray,
        row_starts: np.ndarray,
        picks: list[list[LabelScore]],
        top_terms: int,
    ) -> None:
        """Add to each picked label the terms that raised its score most, placed in the document's text.

        The positive entries of every (document, picked label) pair are
        ranked in one sort over the chunk (by pair, contribution down, then
        column); each pair then walks its own run until ``top_terms``
        distinct terms are placed.
        """
        names = self._feature_names()
        # Every (document, picked label) pair, in the order the loop below visits them.
        pair_doc = np.array([i for i, labels in enumerate(picks) for _ in labels], dtype=np.intp)
        if not len(pair_doc) or top_terms <= 0:
            return
        pair_label = np.array([self._label_index[score.id] for labels in picks for score in labels], dtype=np.intp)
        firsts = row_starts[pair_doc]
        lens = row_starts[pair_doc + 1] - firsts
        # Each pair's document entries, with their contribution to the pair's label; the positive ones ranked
        # by pair, contribution down, then column (the entries of a document are in column order).
        pair_of = np.repeat(np.arange(len(pair_doc)), lens)
        entry = np.arange(int(lens.sum())) + np.repeat(firsts - (np.cumsum(lens) - lens), lens)
        values = contrib[entry, pair_label[pair_of]]
        positive = values > 0
        entry, values, pair_of = entry[positive], values[positive], pair_of[positive]
        # Two stable sorts (contribution, then pair) instead of a lexsort: ties keep the entries'
        # column order, and NumPy sorts the small pair numbers by radix.
        order = np.argsort(-values, kind="stable")
        pairs = pair_of[order]
        order = order[np.argsort(pairs.astype(np.int16) if len(pair_doc) < 2**15 else pairs, kind="stable")]
        entry, values, pair_of = entry[order], values[order], pair_of[order]
        starts = np.searchsorted(pair_of, np.arange(len(pair_doc) + 1))
        # Enough candidates for nearly every label; the rest of a run is read only when some cannot be placed.
        head = 3 * top_terms
        first = np.arange(len(entry)) - starts[pair_of] < head
        columns = col[entry[first]].tolist()
        weights = values[first].tolist()
        run = np.searchsorted(pair_of[first], np.arange(len(pair_doc) + 1)).tolist()
        all_columns, all_weights = col[entry], values
        tokenizer, priors = self.tokenizer(), self._prior_keyword_lists()

        def candidates(p: int) -> Iterator[tuple[int, float]]:
            # The head of pair p's run, then (only when terms remain unplaced) the rest of it.
            yield from zip(columns[run[p] : run[p + 1]], weights[run[p] : run[p + 1]], strict=True)
            for k in range(int(starts[p]) + head, int(starts[p + 1])):
                yield int(all_columns[k]), float(all_weights[k])

        p = 0
        for i, labels in enumerate(picks):
            if not labels:
                continue
            find = _SpanLocator(docs[i], analysed[i], tokenizer, priors, self._field_cols).find
            for score in labels:
                seen: set[str] = set()
                for column, weight in candidates(p):
                    hit = find(names[column], column)
                    if hit is not None and hit[0] not in seen:
                        seen.add(hit[0])
                        score.evidence.append(Evidence(hit[0], hit[1], hit[2], hit[3], weight))
                        if len(score.evidence) >= top_terms:
                            break
                p += 1


class _SpanLocator:
    """Finds where a feature stands in a document's original field text.

    A term is looked for directly in the field's lower-cased normalised text
    (an English stem is widened to its whole word); a term not found that
    way (a verb's dictionary form, a spelling variant unidic normalised) is
    placed through the first surface MeCab gave it in that field.
    """

    def __init__(
        self,
        doc: Document,
        analysed: Analysed,
        tokenizer: Tokenizer,
        prior_keywords: dict[str, list[str]],
        field_cols: dict[str, Any],
    ) -> None:
        self.doc = doc
        self.analysed = analysed
        self.tokenizer = tokenizer
        self.prior_keywords = prior_keywords
        #: Per text field, the column of each MeCab morpheme (the scorer's caches).
        self.field_cols = field_cols
        self._surfaces: dict[str, dict[str, str]] = {}
        self._offsets: dict[str, tuple[list[int], list[int]] | None] = {}
        self._found: dict[int, tuple[str, str, int, int] | None] = {}

    def _lower(self, name: str) -> str:
        low = self.analysed.low[name]
        # A rare letter whose lower case is longer would shift every offset: search the normalised text then.
        return low if len(low) == len(self.analysed.norm[name]) else self.analysed.norm[name]

    def _span(self, name: str, a: int, b: int) -> tuple[str, str, int, int]:
        """Map normalised [a, b) of field ``name`` to (original text, field, start, end)."""
        original = getattr(self.doc, name)
        if name not in self._offsets:
            norm = self.analysed.norm[name]
            self._offsets[name] = None if len(norm) == len(original) else normalize_with_offsets(original)[1:]
        offsets = self._offsets[name]
        if offsets is not None:
            a, b = offsets[0][a], offsets[1][b - 1]
        return original[a:b], name, a, b

    def _at(self, name: str, needle: str) -> tuple[str, str, int, int] | None:
        low = self._lower(name)
        a = low.find(needle) if needle else -1
        if a < 0:
            return None
        b = a + len(needle)
        if needle.isascii() and needle[-1:].isalnum():
            b = _ASCII_WORD_END.match(low, b).end()  # type: ignore[union-attr]
        return self._span(name, a, b)

    def _surface(self, name: str, term: str, column: int) -> str | None:
        """The first surface MeCab gave feature ``term`` (column ``column``) in field ``name``."""
        tokens = self.analysed.mecab.get(name)
        cache = self.field_cols.get(name)
        if tokens is not None and cache is not None and not self.tokenizer.compounds:
            key = cache.first_with(tokens, column)  # the first occurrence
            return None if key is None else key_surface(key)
        surfaces = self._surfaces.get(name)
        if surfaces is None:
            surfaces = self._surfaces[name] = {}
            for f, surface in self.tokenizer.pairs(self.analysed.norm[name]):
                surfaces.setdefault(f, surface)
        return surfaces.get(term)

    def find(self, name: tuple[str, str], column: int) -> tuple[str, str, int, int] | None:
        """Return (original text, field, start, end) of feature ``name`` = (block, term), or None if it cannot be placed.

        ``column`` is the feature's model column; answers are remembered per column.
        """
        found = self._found
        if column in found:
            return found[column]
        hit = found[column] = self._find(name[0], name[1], column)
        return hit

    def _find(self, block: str, term: str, column: int) -> tuple[str, str, int, int] | None:
        if block in TEXT_FIELDS:
            if term.startswith("kw="):
                return self._at(block, term[3:])
            low = self._lower(block)
            a = low.find(term)
            if a >= 0:
                if not term.isascii():
                    return self._span(block, a, a + len(term))
                # An English stem: its first occurrence must start a word; the span is the whole word.
                if term.isalpha() and (a == 0 or not low[a - 1].isalnum()):
                    return self._span(block, a, _ASCII_WORD_END.match(low, a + len(term)).end())  # type: ignore[union-attr]
            surface = self._surface(block, term, column)
            return self._at(block, surface) if surface else None
        if block in ("program", "field"):
            text = getattr(self.doc, block)
            return (text, block, 0, len(text)) if text else None
        if block == "prior":
            # The label's first keyword (longest first) found in the first field that has one.
            words = self.prior_keywords.get(term.partition("=")[2], [])
            if not words:
                return None
            matcher = _keyword_matcher(tuple(words))
            for name in TEXT_FIELDS:
                hits = matcher.find_matches_as_indexes(self._lower(name), overlapping=True)
                if hits:
                    return self._at(name, words[min(k for k, _, _ in hits)])
        return None


@functools.lru_cache(maxsize=256)
def _keyword_matcher(words: tuple[str, ...]) -> Any:
    """An Aho-Corasick automaton of one label's keywords; a match's index is the keyword's rank."""
    import ahocorasick_rs

    return ahocorasick_rs.AhoCorasick(list(words))
