"""The 17 domains and 6 pillars, read from labels/taxonomy.yaml (the only label list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from classifier.errors import TaxonomyError
from classifier.resources import labels_dir

KINDS = ("domain", "pillar")


@dataclass(frozen=True)
class Label:
    """One domain or pillar of the taxonomy."""

    id: str
    kind: str
    number: int
    mark: str
    ja: str
    en: str
    group: str = ""
    definition: str = ""
    definition_ja: str = ""
    keywords_ja: tuple[str, ...] = ()
    keywords_en: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """Return the label as a JSON-ready dict (no keyword lists)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "number": self.number,
            "mark": self.mark,
            "ja": self.ja,
            "en": self.en,
            "group": self.group,
            "definition": self.definition,
            "definition_ja": self.definition_ja,
        }


@dataclass(frozen=True)
class Taxonomy:
    """The versioned label set: domains then pillars, each in the plan's order."""

    version: str
    domains: tuple[Label, ...]
    pillars: tuple[Label, ...]
    _by_name: dict[str, Label] = field(default_factory=dict, compare=False, repr=False)

    @property
    def labels(self) -> tuple[Label, ...]:
        """All labels, domains first."""
        return self.domains + self.pillars

    @property
    def domain_ids(self) -> list[str]:
        """Domain ids in the plan's order."""
        return [d.id for d in self.domains]

    @property
    def pillar_ids(self) -> list[str]:
        """Pillar ids in the plan's order."""
        return [p.id for p in self.pillars]

    def ids(self, kind: str) -> list[str]:
        """Return the ids of one kind ("domain" or "pillar")."""
        return self.domain_ids if kind == "domain" else self.pillar_ids

    def get(self, label_id: str) -> Label:
        """Return the label with this id; raises TaxonomyError if unknown."""
        for label in self.labels:
            if label.id == label_id:
                return label
        raise TaxonomyError(f"unknown label id {label_id!r}; known ids: {', '.join(x.id for x in self.labels)}")

    def resolve(self, name: str) -> Label:
        """Return the label named by id, Japanese or English name, or mark-less number.

        Raises TaxonomyError naming the unknown value.
        """
        key = _name_key(name)
        if key in self._by_name:
            return self._by_name[key]
        raise TaxonomyError(f"unknown label {name!r}: use an id of the labeling guide, e.g. 'quantum', or a name such as '量子'")

    def resolve_ids(self, names: list[str], kind: str) -> tuple[list[str], list[tuple[int, str]]]:
        """Resolve label names of one kind ("domain" or "pillar") to unique ids in the plan's order.

        Returns ``(ids, problems)``: each problem is the position of a name
        that is unknown or of the other kind, with the reason. Callers decide
        whether a problem stops them (training data, feedback) or is collected
        (validation reports).
        """
        ids: list[str] = []
        problems: list[tuple[int, str]] = []
        for i, name in enumerate(names):
            try:
                label = self.resolve(name)
            except TaxonomyError as exc:
                problems.append((i, str(exc)))
                continue
            if label.kind != kind:
                problems.append((i, f"{name!r} is a {label.kind}, listed under {kind}s"))
            elif label.id not in ids:
                ids.append(label.id)
        order = self.ids(kind)
        return sorted(ids, key=order.index), problems


def _name_key(name: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFKC", str(name)).strip().lower().replace(" ", "_")


def _label(entry: dict, kind: str, path: Path) -> Label:
    try:
        return Label(
            id=str(entry["id"]),
            kind=kind,
            number=int(entry["number"]),
            mark=str(entry.get("mark", "")),
            ja=str(entry["ja"]),
            en=str(entry["en"]),
            group=str(entry.get("group", "")),
            definition=str(entry.get("definition", "")),
            definition_ja=str(entry.get("definition_ja", "")),
            keywords_ja=tuple(str(k) for k in entry.get("keywords_ja") or ()),
            keywords_en=tuple(str(k) for k in entry.get("keywords_en") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise TaxonomyError(f"{path}: malformed {kind} entry {entry!r}: {exc}") from exc


def load_taxonomy(path: Path | None = None) -> Taxonomy:
    """Read the taxonomy file (default labels/taxonomy.yaml).

    Raises TaxonomyError if the file is missing or malformed.
    """
    path = path or labels_dir() / "taxonomy.yaml"
    return _load_taxonomy_cached(str(path))


@lru_cache(maxsize=8)
def _load_taxonomy_cached(path_str: str) -> Taxonomy:
    import yaml

    path = Path(path_str)
    try:
        # libyaml's loader when built in: every classify command reads this file (issue 2).
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError as exc:
        raise TaxonomyError(f"taxonomy file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "version" not in data:
        raise TaxonomyError(f"{path}: expected a mapping with 'version', 'domains' and 'pillars'")
    domains = tuple(_label(e, "domain", path) for e in data.get("domains") or ())
    pillars = tuple(_label(e, "pillar", path) for e in data.get("pillars") or ())
    if not domains or not pillars:
        raise TaxonomyError(f"{path}: needs at least one domain and one pillar")
    ids = [x.id for x in domains + pillars]
    if len(set(ids)) != len(ids):
        raise TaxonomyError(f"{path}: duplicate label ids")
    by_name: dict[str, Label] = {}
    for label in domains + pillars:
        for name in (label.id, label.ja, label.en):
            by_name[_name_key(name)] = label
    return Taxonomy(version=str(data["version"]), domains=domains, pillars=pillars, _by_name=by_name)
