"""`granttag data`, `retrain`, `bootstrap`, `models rollback` and `models diff` (issue 6).

Only click is imported here at module level; the core is imported inside the
commands so that `granttag --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

CHOICES = ("ask", "fix", "skip", "stop")


def _settings() -> Any:
    from granttag.settings import get_settings

    return get_settings()


def _store() -> Any:
    from classifier.datastore import DataStore
    from granttag.settings import data_dir

    return DataStore(data_dir(_settings()))


def _run(fn: Callable[[], Any]) -> Any:
    from granttag.cli import _run as run

    return run(fn)


def publisher(settings: Any = None) -> Callable[[str], None]:
    """Return the callback that tells every worker about a newly active version (issue 4's registry).

    When the worker module is not installed or Redis does not answer, the
    callback says so on stderr: local commands already use the new version,
    and workers pick it up once it is published (`granttag models activate`).
    """
    settings = settings or _settings()

    def publish(version: str) -> None:
        try:
            from worker.registry import publish_active_model
        except ImportError:
            return
        try:
            publish_active_model(settings)
        except Exception as exc:  # Redis down or misconfigured: the local store is already switched
            click.echo(f"warning: {version} is active here, but the workers were not told ({exc})", err=True)

    return publish


def _progress(stage: str, fraction: float) -> None:
    click.echo(f"[{fraction:4.0%}] {stage}", err=True)


# --- data -------------------------------------------------------------------------------
def _validate(paths: list[Path], store: Any, columns: Any) -> Any:
    from classifier.validation import validate_files

    existing, _ = store.snapshot()
    return validate_files(paths, store.taxonomy, existing, columns)


def _choose(on_problem: str) -> str:
    if on_problem != "ask":
        return on_problem
    if not sys.stdin.isatty():
        return "stop"
    return str(
        click.prompt(
            "fix the file and validate again, skip the records with problems, or stop (nothing imported)?",
            type=click.Choice(["fix", "skip", "stop"]),
            default="stop",
            err=True,
        )
    )


def _fix(paths: list[Path]) -> None:
    """Let the operator fix the files: $EDITOR for text files, else wait until they say it is done."""
    for path in paths:
        if path.suffix.lower() in (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json"):
            click.edit(filename=str(path))
        else:
            click.prompt(f"fix {path} and press Enter to validate it again", default="", show_default=False, err=True)


def data_add(paths: list[Path], on_problem: str, report_path: Path | None, columns: Any, note: str) -> None:
    """Validate ``paths`` and add them as one source, as the operator chooses on problems."""
    from classifier.errors import TrainingDataError

    store = _store()
    rounds = 0
    while True:
        report = _validate(paths, store, columns)
        if report_path is not None:
            report_path.write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if report.ok:
            data, skipped = report.data, []
            break
        click.echo(report.format(), err=True)
        choice = _choose(on_problem)
        if choice == "fix":
            rounds += 1
            if rounds > 20:
                raise TrainingDataError("still problems after 20 rounds of fixing; nothing was imported")
            _fix(paths)
            continue
        if choice == "stop":
            click.echo("stopped: nothing was imported", err=True)
            sys.exit(1)
        data, skipped = report.clean()
        if not len(data):
            raise TrainingDataError("every record has a problem; nothing was imported")
        for problem in report.blocking():
            click.echo(f"warning: {problem} (a retrain refuses until this is fixed)", err=True)
        break
    origin = ", ".join(str(p.resolve()) for p in paths)
    src = store.add(data, origin, skipped=skipped, note=note)
    click.echo(f"added {src.id}: {src.records} records from {origin}" + (f" ({len(skipped)} skipped)" if skipped else ""))


def register(main: Any) -> None:
    """Add this module's commands to the `granttag` group ``main`` and its `models` group."""
    from granttag.cli import _column_options, _columns, models

    @main.group()
    def data() -> None:
        """Manage the labeled training data a retrain uses (sources with their origin and time)."""

    @data.command("add")
    @click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
    @_column_options
    @click.option(
        "--on-problem",
        type=click.Choice(CHOICES),
        default="ask",
        show_default=True,
        help="On problems: ask (stop when not on a terminal), fix (edit, validate again), skip the bad records, or stop.",
    )
    @click.option(
        "--report", "report_path", type=click.Path(path_type=Path), default=None, help="Write the validation report here as JSON."
    )
    @click.option("--note", default="", help="A note kept with the source.")
    def data_add_cmd(files: tuple[Path, ...], on_problem: str, report_path: Path | None, note: str, **kw: Any) -> None:
        """Validate labeled FILES (CSV/TSV/JSONL/XLSX with domains and pillars) and add them as one source.

        Validation names file and line for: unknown labels, empty or
        undecodable text, exact and near duplicates (also of data already in
        the store), the same text with conflicting labels, and labels with too
        few examples. Nothing is half-imported: either the whole (or, with
        skip, every clean record) is added, or nothing. Exit status 1 when
        stopped on problems.
        """
        columns = _columns(kw)
        _run(lambda: data_add(list(files), on_problem, report_path, columns, note))

    @data.command("validate")
    @click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
    @_column_options
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    def data_validate(files: tuple[Path, ...], as_json: bool, **kw: Any) -> None:
        """Check labeled FILES as `data add` would, without adding anything (exit 1 on problems)."""
        columns = _columns(kw)

        def go() -> None:
            report = _validate(list(files), _store(), columns)
            click.echo(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if as_json else report.format())
            if not report.ok:
                sys.exit(1)

        _run(go)

    @data.command("list")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def data_list(as_json: bool) -> None:
        """List the data sources; * marks the active ones (a retrain uses those)."""

        def go() -> None:
            store = _store()
            sources = store.sources()
            for src in sources:
                if src.kind in ("corpus", "feedback"):
                    try:
                        src.records = len(store.load(src.id))
                    except Exception:  # a damaged built-in source is reported by `data show`
                        src.records = -1
            if as_json:
                click.echo(json.dumps([s.as_dict() for s in sources], ensure_ascii=False, indent=2))
                return
            for src in sources:
                mark = "*" if src.active else " "
                click.echo(f"{mark} {src.id:<10} {src.kind:<9} {src.records:>7} records  {src.added or '-':<25}  {src.origin}")

        _run(go)

    @data.command("show")
    @click.argument("source")
    @click.option("-n", "--records", "count", type=click.IntRange(0), default=5, show_default=True, help="Records to print.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def data_show(source: str, count: int, as_json: bool) -> None:
        """Show one data source: origin, time, counts per label and its first records."""

        def go() -> None:
            from collections import Counter

            from classifier.datastore import record_dict

            store = _store()
            src = store.get(source)
            part = store.load(source)
            labels = Counter(x for dm, pl in zip(part.domains, part.pillars, strict=False) for x in dm + pl)
            firsts = list(zip(part.docs, part.domains, part.pillars, part.sources, strict=True))[:count]
            rows = [record_dict(d, dm, pl, w) for d, dm, pl, w in firsts]
            info = {**src.as_dict(), "records": len(part), "labels": dict(labels.most_common()), "first_records": rows}
            if as_json:
                click.echo(json.dumps(info, ensure_ascii=False, indent=2))
                return
            for key in ("id", "kind", "origin", "added", "records", "sha256", "active", "note"):
                click.echo(f"{key:<8} {info[key]}")
            if src.skipped:
                click.echo(
                    f"skipped  {len(src.skipped)} record(s) with problems: "
                    f"{', '.join(src.skipped[:5])}{' ...' if len(src.skipped) > 5 else ''}"
                )
            click.echo("labels   " + ", ".join(f"{k} {v}" for k, v in info["labels"].items()))
            for row in rows:
                click.echo(f"  {row['id']}: {row['title'][:60]}  [{', '.join(row['domains'])}] [{', '.join(row['pillars'])}]")

        _run(go)

    @data.command("remove")
    @click.argument("source")
    def data_remove(source: str) -> None:
        """Remove an added source (its records are deleted); the built-in corpus and feedback are deactivated instead."""

        def go() -> None:
            src = _store().remove(source)
            if src.kind in ("corpus", "feedback"):
                click.echo(f"deactivated {src.id} (a built-in source; `granttag data restore {src.id}` brings it back)")
            else:
                click.echo(f"removed {src.id}: {src.records} records from {src.origin}")

        _run(go)

    @data.command("restore")
    @click.argument("source")
    def data_restore(source: str) -> None:
        """Make a deactivated built-in source (corpus, feedback) active again."""
        _run(lambda: click.echo(f"activated {_store().set_active(source, True).id}"))

    # --- retrain ------------------------------------------------------------------------
    @main.command()
    @click.option(
        "--holdout",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        required=True,
        help="Frozen labeled holdout (format of shared/eval/dev.jsonl); never trained on.",
    )
    @click.option("--local", is_flag=True, help="Train in this process instead of through the Celery `train` queue.")
    @click.option(
        "--cv-folds", type=click.IntRange(0), default=None, help="Cross-validation folds (0: none; default GRANTTAG_RETRAIN_CV_FOLDS)."
    )
    @click.option(
        "--margin",
        type=click.FloatRange(0, 1),
        default=None,
        help="Largest F1 drop allowed for a label with enough support (default GRANTTAG_RETRAIN_MARGIN).",
    )
    @click.option(
        "--min-support",
        type=click.IntRange(0),
        default=None,
        help="Holdout examples a label needs for its own check (default GRANTTAG_RETRAIN_MIN_SUPPORT).",
    )
    @click.option("--activate/--no-activate", default=True, help="Activate the candidate if it passes the gate (default on).")
    @click.option("--seed", type=int, default=0, help="Random seed.")
    @click.option("--wait/--no-wait", default=False, help="With Celery: wait for the job and print its result.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    def retrain(
        holdout: Path,
        local: bool,
        cv_folds: int | None,
        margin: float | None,
        min_support: int | None,
        activate: bool,
        seed: int,
        wait: bool,
        as_json: bool,
    ) -> None:
        """Train a candidate on every active data source; promote it only if it passes the quality gate.

        The candidate is evaluated on HOLDOUT and by cross-validation (figures
        in its meta.json). It becomes active only if its domain and pillar
        micro-F1 on the holdout are not lower than the active model's and no
        label with enough support loses more than the margin. A rejected
        candidate stays listed in `granttag models list`. Exit status 1 when
        the candidate was rejected.
        """
        settings = _settings()
        options = {
            "holdout": str(holdout.resolve()),
            "cv_folds": settings.retrain_cv_folds if cv_folds is None else cv_folds,
            "margin": settings.retrain_margin if margin is None else margin,
            "min_support": settings.retrain_min_support if min_support is None else min_support,
            "activate": activate,
            "seed": seed,
            "calibration_cv": settings.retrain_calibration_cv,
            "min_df": settings.retrain_min_df,
        }

        def local_run() -> None:
            from classifier.retraining import retrain_from_store

            result = retrain_from_store(_store(), **options, progress=_progress, on_activate=publisher(settings))
            _print_result(result.as_dict(), as_json)
            if not result.gate.accepted:
                sys.exit(1)

        def queued() -> None:
            from worker.retrain import submit_retrain, wait_retrain

            job_id = submit_retrain(settings, options)
            click.echo(f"retrain job {job_id} queued on `train` (progress: granttag jobs show {job_id})", err=True)
            if not wait:
                click.echo(job_id)
                return
            result = wait_retrain(settings, job_id, progress=_progress)
            _print_result(result, as_json)
            if result.get("gate", {}).get("decision") != "accepted":
                sys.exit(1)

        _run(local_run if local else queued)

    # --- bootstrap ----------------------------------------------------------------------
    @main.command()
    @click.argument("data_files", metavar="DATA", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--field-crosswalk",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        required=True,
        help="Crosswalk from field codes to domains (e.g. labels/crosswalk_kaken.yaml).",
    )
    @click.option("--limit", type=click.IntRange(1), default=None, help="Use at most this many weakly labeled records (a random sample).")
    @click.option(
        "--unmapped",
        type=click.Choice(["none", "skip"]),
        default="none",
        show_default=True,
        help="Codes mapped to no domain: label 'no domain', or leave the records out.",
    )
    @click.option(
        "--keep-field",
        is_flag=True,
        help="Keep the field code in the weak records (by default it is dropped so the model learns from the text).",
    )
    @click.option(
        "--holdout",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Evaluate and gate on this holdout, as `retrain` does, and activate if it passes.",
    )
    @click.option("--cv-folds", type=click.IntRange(0), default=0, show_default=True, help="Cross-validation folds (with --holdout).")
    @click.option(
        "--save-weak", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the weak labels as JSONL here."
    )
    @click.option("--seed", type=int, default=0, help="Random seed.")
    def bootstrap(
        data_files: tuple[Path, ...],
        field_crosswalk: Path,
        limit: int | None,
        unmapped: str,
        keep_field: bool,
        holdout: Path | None,
        cv_folds: int,
        save_weak: Path | None,
        seed: int,
    ) -> None:
        """Weakly label DATA from its field codes through a crosswalk, add the labeled data, and train.

        DATA: JSONL (also .jsonl.gz), CSV, TSV or XLSX records with a field
        code (KAKEN: review_code or review_section). Without --holdout the new
        version is saved but not activated.
        """
        settings = _settings()

        def go() -> None:
            from classifier.bootstrap import weak_labels
            from classifier.corpus import load_crosswalk
            from classifier.datastore import record_dict
            from classifier.model import ModelConfig
            from classifier.retraining import GatePolicy, retrain
            from classifier.training import train_and_save

            crosswalk = load_crosswalk(field_crosswalk)
            weak, stats = weak_labels(list(data_files), crosswalk, unmapped=unmapped, limit=limit, seed=seed, keep_field=keep_field)
            click.echo(
                f"{stats.read} records read: {stats.labeled} weakly labeled ({stats.no_code} without a field code, "
                f"{stats.code_not_in_crosswalk} with a code not in the crosswalk, "
                f"{stats.unmapped_skipped} left out as unmapped); using {stats.sampled}",
                err=True,
            )
            if save_weak is not None:
                with save_weak.open("w", encoding="utf-8") as fh:
                    for d, dm, pl, w in zip(weak.docs, weak.domains, weak.pillars, weak.sources, strict=False):
                        fh.write(json.dumps(record_dict(d, dm, pl, w), ensure_ascii=False) + "\n")
            store = _store()
            labeled, sources = store.snapshot()
            labeled.extend(weak)
            source_info = [s.as_dict() for s in sources] + [
                {
                    "id": "bootstrap",
                    "kind": "bootstrap",
                    "origin": ", ".join(map(str, data_files)),
                    "records": len(weak),
                    "crosswalk": str(field_crosswalk),
                }
            ]
            config = ModelConfig(seed=seed, cv=settings.retrain_calibration_cv, min_df=settings.retrain_min_df, n_jobs=2)
            click.echo(f"training on {len(labeled)} records ({len(weak)} weak)...", err=True)
            if holdout is None:
                version = train_and_save(labeled, config, sources=[s["id"] for s in source_info])
                click.echo(f"saved {version} (not activated: give --holdout to gate it, or `granttag models activate {version}`)", err=True)
                click.echo(version)
                return
            policy = GatePolicy(settings.retrain_margin, settings.retrain_min_support)
            result = retrain(
                labeled,
                holdout,
                sources=source_info,
                config=config,
                policy=policy,
                cv_folds=cv_folds,
                progress=_progress,
                on_activate=publisher(settings),
            )
            _print_result(result.as_dict(), False)
            if not result.gate.accepted:
                sys.exit(1)

        _run(go)

    # --- models rollback / diff -----------------------------------------------------------
    @models.command("rollback")
    def models_rollback() -> None:
        """Make the version that was active before the current one active again (on every worker too)."""

        def go() -> None:
            from classifier.retraining import rollback

            before, now = rollback(on_activate=publisher())
            click.echo(f"rolled back from {before} to {now}")

        _run(go)

    @models.command("diff")
    @click.argument("a")
    @click.argument("b")
    @click.option(
        "--gold",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="Evaluate both on this gold file (default: their stored holdout figures).",
    )
    @click.option(
        "--records",
        "records_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help="List the records of this file whose tags would change.",
    )
    @_column_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def models_diff(a: str, b: str, gold: Path | None, records_file: Path | None, as_json: bool, **kw: Any) -> None:
        """Compare versions A and B: per-label figures side by side, and which tags change on --records."""
        columns = _columns(kw)

        def go() -> None:
            from classifier.records import read_records
            from classifier.retraining import diff_versions

            records = list(read_records(records_file, columns)) if records_file is not None else None
            out = diff_versions(a, b, gold=gold, records=records)
            if as_json:
                click.echo(json.dumps(out, ensure_ascii=False, indent=2))
                return
            click.echo(f"A = {a}\nB = {b}\nfigures from {out['figures_from']}")
            if "warning" in out:
                click.echo(f"warning: {out['warning']}")
            for key, pair in out["figures"].items():
                click.echo(f"  {key:<18} {_num(pair['a']):>8} {_num(pair['b']):>8}")
            click.echo(f"  {'label':<26}{'support':>8}{'F1 A':>8}{'F1 B':>8}{'delta':>8}{'thr A':>8}{'thr B':>8}")
            for row in out["per_label"]:
                click.echo(
                    f"  {row['label']:<26}{_num(row['support'], 0):>8}{_num(row['a_f1']):>8}{_num(row['b_f1']):>8}"
                    f"{_num(row['delta_f1'], sign=True):>8}{_num(row['a_threshold']):>8}{_num(row['b_threshold']):>8}"
                )
            if "records" in out:
                rec = out["records"]
                click.echo(f"{rec['changed']} of {rec['classified']} records change tags from A to B")
                for change in rec["changes"]:
                    click.echo(f"  {change['id']}: +[{', '.join(change['added'])}] -[{', '.join(change['removed'])}]")

        _run(go)


def _num(value: Any, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return str(int(value))
    return f"{float(value):+.{digits}f}" if sign else f"{float(value):.{digits}f}"


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    gate = result["gate"]
    meta = result.get("meta") or {}
    ev = meta.get("evaluation") or {}
    cv = meta.get("cross_validation") or {}
    click.echo(f"candidate {result['version']}: {gate['decision']}{' and activated' if result.get('activated') else ''}")
    for key, pair in (gate.get("figures") or {}).items():
        click.echo(f"  holdout {key:<18} candidate {_num(pair.get('candidate'))}  active {_num(pair.get('baseline'))}")
    if "domains.micro_f1" in cv:
        click.echo(
            f"  cross-validation ({cv['completed']} folds) domains micro-F1 "
            f"{cv['domains.micro_f1']['mean']:.3f} ± {cv['domains.micro_f1']['std']:.3f}"
        )
    for reason in gate.get("reasons", []):
        click.echo(f"  - {reason}")
    if ev and not result.get("activated"):
        click.echo(f"  (kept, not active: `granttag models activate {result['version']}` makes it active)")
