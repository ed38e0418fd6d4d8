"""The `granttag` command: classify, train, evaluate and manage model versions.

Heavy libraries (scikit-learn, fugashi) are imported inside commands so that
`granttag --help` answers at once (issue 2).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

OUTPUT_FORMATS = ("table", "json", "jsonl", "csv", "tsv", "xlsx")


def _fail(exc: Exception) -> None:
    click.echo(f"granttag: {exc}", err=True)
    sys.exit(2)


def _run(fn: Any) -> Any:
    """Call ``fn`` mapping user-actionable errors to a message and exit status 2."""
    from classifier.errors import GranttagError

    try:
        return fn()
    except GranttagError as exc:
        _fail(exc)


def _model(version: str | None) -> Any:
    from classifier.store import ensure_default_model, load_model

    if version is None:
        ensure_default_model(echo=lambda msg: click.echo(msg, err=True))
    return load_model(version)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="granttag")
def main() -> None:
    """Tag research projects with the 7th Basic Plan's 17 technology domains and 6 pillars."""


def _column_options(fn: Any) -> Any:
    for name, help_ in reversed(
        [
            ("id", "column with the record id"),
            ("title", "column with the title"),
            ("text", "column with the abstract/text"),
            ("keywords", "column with keywords (';' or '、' separated)"),
            ("program", "column with the funding program"),
            ("field", "column with the field code (e.g. KAKEN review section)"),
        ]
    ):
        fn = click.option(f"--{name}-col", default=None, help=help_.capitalize() + ".")(fn)
    return fn


def _columns(kw: dict[str, Any]) -> Any:
    from classifier.records import Columns

    return Columns(
        id=kw.pop("id_col"),
        title=kw.pop("title_col"),
        text=kw.pop("text_col"),
        keywords=kw.pop("keywords_col"),
        program=kw.pop("program_col"),
        field=kw.pop("field_col"),
    )


@main.command()
@click.argument("text", required=False)
@click.option("-f", "--file", "files", multiple=True, type=click.Path(path_type=Path), help="CSV/TSV/JSONL/XLSX file of records (repeatable).")
@click.option("--input-format", type=click.Choice(["csv", "tsv", "jsonl", "xlsx"]), default=None, help="Input format when the suffix does not say.")
@_column_options
@click.option("--title", default="", help="Title of the single text given as TEXT.")
@click.option("--keywords", default="", help="Keywords of the single text given as TEXT.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Write results here (format from suffix).")
@click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default=None, help="Output format (default: table on a terminal, else by -o suffix).")
@click.option("--model", "version", default=None, help="Model version (default: the active one).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="One threshold for all labels instead of the tuned ones.")
@click.option("--top-k", type=click.IntRange(1), default=None, help="At most K labels of each kind.")
@click.option("--explain/--no-explain", default=True, help="Add evidence terms (default on).")
@click.option("-j", "--jobs", type=click.IntRange(1), default=None, help="Worker processes for files (default: all cores).")
def classify(text: str | None, files: tuple[Path, ...], input_format: str | None, **kw: Any) -> None:
    """Classify TEXT, standard input, or the records of --file.

    Exit status: 0 when every record was tagged, 1 when some failed (they are
    written as error rows), 2 on a usage or model error.
    """
    # Prediction makes no BLAS calls: without this, NumPy's OpenBLAS starts a thread per core
    # that spins for a while and takes CPU from the worker processes (about 0.1 s per 20,000
    # records, issue 2). Set before NumPy is imported; a value the user set is kept.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    columns = _columns(kw)
    _run(lambda: _classify(text, files, input_format, columns, **kw))


def _classify(text: str | None, files: tuple[Path, ...], input_format: str | None, columns: Any, **kw: Any) -> None:
    from classifier.errors import InvalidInputError

    fmt = kw["fmt"]
    output: Path | None = kw["output"]
    if fmt is None:
        fmt = output.suffix.lower().lstrip(".") if output is not None else ""
        if fmt not in OUTPUT_FORMATS:
            fmt = "table"
    opts = {"threshold": kw["threshold"], "top_k": kw["top_k"], "explain": kw["explain"]}
    if not files:
        if text is None or text == "-":
            if sys.stdin.isatty():
                raise InvalidInputError("give TEXT, pipe text on standard input, or --file FILE")
            text = sys.stdin.read()
        _classify_one(text, kw["title"], kw["keywords"], fmt, output, kw["version"], opts)
        return
    if text is not None:
        raise InvalidInputError("give either TEXT or --file, not both")
    _classify_files(files, input_format, columns, fmt, output, kw["version"], kw["jobs"], opts)


def _classify_one(text: str, title: str, keywords: str, fmt: str, output: Path | None, version: str | None, opts: dict[str, Any]) -> None:
    from classifier.documents import make_document

    from granttag.output import Writer

    doc = make_document({"id": "text", "title": title, "abstract": text, "keywords": keywords}, "input text")
    model = _model(version)
    pred = model.predict([doc], **opts)[0].as_dict()
    if fmt == "json":
        pred.pop("id")
        out = json.dumps(pred, ensure_ascii=False, indent=2)
        if output:
            output.write_text(out + "\n", encoding="utf-8")
        else:
            click.echo(out)
        return
    writer = Writer(fmt, output)
    writer.write({**pred, "status": "ok"})
    writer.close()


def _classify_files(
    files: tuple[Path, ...], input_format: str | None, columns: Any, fmt: str, output: Path | None, version: str | None, jobs: int | None, opts: dict[str, Any]
) -> None:
    import os

    from classifier.batch import classify_records
    from classifier.records import read_records

    from granttag.output import Writer

    if fmt == "json":
        fmt = "jsonl"
    records = []
    for path in files:
        # JSONL lines are parsed by the processes that classify them.
        records.extend(read_records(path, columns, input_format, lazy=True))
    model = _model(version)
    writer = Writer(fmt, output)
    counts = {"tagged": 0, "failed": 0}
    bar = None
    if len(records) > 300:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="rec", file=sys.stderr, disable=None)
    try:
        for outcome in classify_records(
            model, records, jobs=jobs or os.cpu_count() or 1, progress=bar.update if bar else None, render=writer.renderer(), **opts
        ):
            if outcome.rendered is not None:
                writer.write_text(outcome.rendered)
            else:
                writer.write(outcome.as_dict())
            if outcome.ok:
                counts["tagged"] += 1
            else:
                counts["failed"] += 1
                click.echo(f"error: {outcome.error}", err=True)
    finally:
        writer.close()
        if bar:
            bar.close()
    click.echo(f"{len(records)} records: {counts['tagged']} tagged, {counts['failed']} failed", err=True)
    if counts["failed"]:
        sys.exit(1)


@main.command()
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@_column_options
@click.option("--with-corpus", is_flag=True, help="Train on the project's own corpus (labels/corpus) too.")
@click.option("--activate/--no-activate", default=True, help="Make the new version active (default on).")
@click.option("--gold", type=click.Path(exists=True, path_type=Path), default=None, help="Evaluate on this gold file and store the figures.")
@click.option("--seed", type=int, default=0, help="Random seed (training is deterministic for a seed).")
def train(data: tuple[Path, ...], with_corpus: bool, activate: bool, gold: Path | None, seed: int, **kw: Any) -> None:
    """Train a new model version from labeled CSV/TSV/JSONL/XLSX DATA.

    DATA needs domains and pillars columns (ids or Japanese/English names,
    ';'-separated in CSV, lists in JSONL) besides the text columns.
    """
    columns = _columns(kw)

    def go() -> None:
        from classifier import store
        from classifier.corpus import load_corpus, load_labeled
        from classifier.model import ModelConfig
        from classifier.taxonomy import load_taxonomy
        from classifier.training import train_and_save

        taxonomy = load_taxonomy()
        labeled = load_labeled(list(data), taxonomy, columns)
        if with_corpus:
            labeled.extend(load_corpus(taxonomy))
        click.echo(f"training on {len(labeled)} records...", err=True)
        version = train_and_save(
            labeled, ModelConfig(seed=seed, n_jobs=2), gold=gold, sources=[str(p) for p in data] + (["labels/corpus"] if with_corpus else [])
        )
        if activate:
            store.activate(version)
        click.echo(version)

    _run(go)


@main.command()
@click.argument("gold", type=click.Path(path_type=Path))
@click.option("--model", "version", default=None, help="Model version (default: the active one).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None, help="One threshold for all labels.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys like domains.micro_f1).")
def evaluate(gold: Path, version: str | None, threshold: float | None, as_json: bool) -> None:
    """Evaluate a model on GOLD (JSONL in the format of shared/eval/dev.jsonl)."""

    def go() -> None:
        from classifier.evaluation import evaluate_model, format_report, load_gold

        data = load_gold(gold)
        model = _model(version)
        report = evaluate_model(model, data, threshold)
        if as_json:
            click.echo(json.dumps(report.flat(), ensure_ascii=False))
        else:
            click.echo(format_report(report))

    _run(go)


@main.group()
def models() -> None:
    """List, show and activate model versions."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_list(as_json: bool) -> None:
    """List model versions; * marks the active one."""

    def go() -> None:
        from classifier.store import list_versions

        versions = list_versions()
        if as_json:
            click.echo(json.dumps(versions, ensure_ascii=False, indent=2))
            return
        if not versions:
            click.echo("no model versions yet (`granttag classify` builds the default)")
        for meta in versions:
            ev = meta.get("evaluation") or {}
            figs = f"  domains F1 {ev['domains.micro_f1']:.3f}" if "domains.micro_f1" in ev else ""
            mark = "*" if meta.get("active") else " "
            click.echo(f"{mark} {meta['version']}  {meta.get('training_records', '?')} records{figs}")

    _run(go)


@models.command("show")
@click.argument("version", required=False)
def models_show(version: str | None) -> None:
    """Show a version's meta.json (default: the active one)."""

    def go() -> None:
        from classifier.errors import ModelNotFoundError
        from classifier.store import active_version, read_meta

        name = version or active_version()
        if name is None:
            raise ModelNotFoundError("no active model")
        click.echo(json.dumps(read_meta(name), ensure_ascii=False, indent=2))

    _run(go)


@models.command("activate")
@click.argument("version")
def models_activate(version: str) -> None:
    """Make VERSION the active model (after checking it loads)."""

    def go() -> None:
        from classifier.store import activate, load_model

        load_model(version)
        activate(version)
        click.echo(f"active model: {version}")
        # Workers on every machine follow the version published in Redis (issue 4).
        from classifier.errors import ServiceUnavailableError
        from granttag.settings import get_settings
        from worker.registry import publish_active_model

        try:
            publish_active_model(get_settings())
            click.echo(f"published {version} to the workers through Redis")
        except ServiceUnavailableError as exc:
            click.echo(f"activated locally only; not published to the workers: {exc}", err=True)

    _run(go)


from granttag.cli_tag import register as _register_tag; _register_tag(main)  # noqa: E402, E702
from granttag.cli_data import register as _register_data; _register_data(main)  # noqa: E402, E702
from granttag.cli_serve import register as _register_serve; _register_serve(main)  # noqa: E402, E702

if __name__ == "__main__":
    main()
