"""`tunefleet study …`: create, list, show, trials, enqueue, stop, resume, delete, best, watch and report, over REST."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from tunefleet.client import TunefleetClient

DEFAULT_URL = "http://127.0.0.1:8000"
# `study delete` answered no: nothing went wrong, and nothing was done.
EXIT_DECLINED = 1


class UsageError(Exception):
    """A mistake in the command line or its files: printed as one line, exit code 2."""


def apply_overrides(spec: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply `--set budget.n_trials=100`-style overrides; values are read as YAML (numbers, lists, …)."""
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise UsageError(f"--set takes KEY.PATH=VALUE, got {assignment!r}")
        keys = path.split(".")
        node = spec
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {path}: {key} is not a mapping in the spec")
            node = child
        try:
            node[keys[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UsageError(f"--set {path}: cannot read {raw!r}: {error}") from error
    return spec


def _best_text(study: dict[str, Any]) -> str:
    front = study.get("pareto_front_size")
    if isinstance(front, int):
        return f"front of {front}"
    best = study.get("best_value")
    return f"{best:.4f}" if isinstance(best, float) else "-"


def _metric_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def front_text(front: dict[str, Any]) -> str:
    """A Pareto front as `tunefleet study best` prints it: one line per trial, its values by metric first."""
    metrics = front["metrics"]
    objectives = ", ".join(f"{m} ({d})" for m, d in zip(metrics, front["directions"], strict=True))
    lines = [f"Pareto front of {front['study_name']}: {len(front['trials'])} trials; {objectives}"]
    for trial in front["trials"]:
        values = " ".join(f"{m}={_metric_text(trial['values'].get(m))}" for m in metrics)
        model = "" if trial["model"] else "  (no model)"
        params = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items()
        )
        lines.append(f"#{trial['number']:<5} {values}  {params}{model}")
    return "\n".join(lines)


def _model_choice(args: argparse.Namespace) -> dict[str, Any]:
    """Which trial's model `study best --download` asks for: --trial, or --prefer with --max/--min bounds."""
    bounds: dict[str, float] = {}
    for limit in ("max", "min"):
        for given in getattr(args, limit) or []:
            metric, sep, number = given.partition("=")
            try:
                bounds[f"{limit}_{metric.strip()}"] = float(number)
            except ValueError:
                raise UsageError(
                    f"--{limit} takes METRIC=NUMBER, e.g. val_loss=0.15; got {given!r}"
                ) from None
            if not sep or not metric.strip():
                raise UsageError(f"--{limit} takes METRIC=NUMBER, e.g. val_loss=0.15; got {given!r}")
    choice: dict[str, Any] = {}
    if args.trial is not None:
        choice["trial"] = args.trial
    if args.prefer is not None:
        choice["prefer"] = args.prefer
    if bounds:
        choice["bounds"] = bounds
    if choice and not args.download:
        raise UsageError("--trial, --prefer, --max and --min choose the model that --download DIR saves")
    return choice


def _study_line(study: dict[str, Any]) -> str:
    done = f"{study['n_finished']}/{study['n_trials']}"
    return f"{study['name']:<32} {study['state']:<10} {done:>11}  best {_best_text(study)}"


def _trial_line(trial: dict[str, Any]) -> str:
    value = trial.get("value")
    value_text = f"{value:.4f}" if isinstance(value, float) else "-"
    params = _params_text(trial["params"])
    reason = f"  ({trial['fail_reason']})" if trial.get("fail_reason") else ""
    # Where the configuration came from: a set a user enqueued (user attribute `enqueued`), not the sampler.
    attrs = trial.get("user_attrs") or {}
    origin = f"  [from {attrs['warm_start_from']}]" if attrs.get("warm_start_from") else ""
    origin = origin or ("  [enqueued]" if attrs.get("enqueued") else "")
    return f"#{trial['number']:<5} {trial['state']:<9} {value_text:>8}  {params}{origin}{reason}"


def _show(study: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in study["trial_counts"].items() if n) or "no trials"
    lines = [
        f"study      {study['name']}",
        f"state      {study['state']}" + (f" ({study['state_reason']})" if study.get("state_reason") else ""),
        f"progress   {study['n_finished']}/{study['n_trials']} finished: {counts}",
        f"best       {_best_text(study)}",
        f"dashboard  {study['dashboard_url']}",
    ]
    warm = study.get("warm_start")
    if warm:
        queued = len(warm.get("trials") or [])
        prior = int(warm.get("prior_configurations") or 0)
        lines.append(
            f"warm start {queued} trial{'' if queued == 1 else 's'} from {', '.join(warm.get('sources') or [])}"
            + (f"; a prior of {prior} good configuration{'' if prior == 1 else 's'}" if prior else "")
        )
    lines += [f"warning    {w}" for w in study.get("warnings") or []]
    best = study.get("best_trial")
    if best:
        lines.append(f"best trial #{best['number']}:")
        lines += [f"  {k:<14} {v}" for k, v in best["params"].items()]
    return "\n".join(lines)


def _read_spec(path_text: str, assignments: list[str]) -> dict[str, Any]:
    from studies.spec import PRESETS_DIR, load_spec_file, preset_path

    path = Path(path_text)
    if not path.is_file() and not path.suffix and preset_path(path_text).is_file():
        # A preset's name, as `tunefleet demo --preset` takes it.
        path = preset_path(path_text)
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
        raise UsageError(f"no such spec file: {path} (or a preset: {presets})")
    try:
        spec = load_spec_file(path)
    except Exception as error:
        raise UsageError(f"{path}: {str(error).splitlines()[0]}") from error
    return apply_overrides(spec, assignments)


def _read_param_sets(path_text: str) -> list[dict[str, Any]]:
    """One parameter set (a mapping) or a list of them, from a YAML or JSON file, or stdin for `-`."""
    where = "stdin" if path_text == "-" else path_text
    try:
        text = sys.stdin.read() if path_text == "-" else Path(path_text).read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read {where}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {where}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UsageError(f"{where}: not YAML or JSON: {str(error).splitlines()[0]}") from None
    if data is None or data == []:
        raise UsageError(f"{where} holds no parameter set: give name: value lines, or a list of such sets")
    sets = data if isinstance(data, list) else [data]
    for index, params in enumerate(sets):
        what = f"item {index}" if isinstance(data, list) else "the set"
        if not isinstance(params, dict):
            raise UsageError(
                f"{where}: {what} is {type(params).__name__}, not a mapping of parameter names to values"
            )
        for name, value in params.items():
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                # YAML reads 2024-01-01 as a date, and has tags for sets and bytes: none is a parameter value.
                raise UsageError(
                    f"{where}: {what}: {name} is a {type(value).__name__}, not a number or text"
                ) from None
    return [{str(name): value for name, value in params.items()} for params in sets]


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_study_command(args: argparse.Namespace) -> int:
    """Dispatch one `tunefleet study` subcommand."""
    as_json: bool = args.json

    def emit(data: Any, text: str) -> None:
        print(json.dumps(data, indent=2, default=str) if as_json else text)

    with TunefleetClient(args.url, token=os.environ.get("TUNEFLEET_API_TOKEN")) as client:
        command = args.study_command
        if command == "create":
            study = client.create_study(_read_spec(args.file, args.set or []))
            emit(study, f"created {study['name']} ({study['n_trials']} trials)")
        elif command == "list":
            page = client.list_studies(offset=args.offset, limit=args.limit)
            lines = "\n".join(_study_line(s) for s in page["items"]) or "no studies"
            if page["total"] > len(page["items"]):
                lines += f"\n{len(page['items'])} of {page['total']} studies (offset {page['offset']})"
            emit(page, lines)
        elif command == "show":
            study = client.get_study(args.name)
            emit(study, _show(study))
        elif command == "trials":
            page = client.trials(args.name, state=args.state, offset=args.offset, limit=args.limit)
            footer = f"\n{len(page['items'])} of {page['total']} trials (offset {page['offset']})"
            emit(page, "\n".join(_trial_line(t) for t in page["items"]) + footer)
        elif command == "enqueue":
            param_sets = _read_param_sets(args.file)
            enqueued = client.enqueue_trials(args.name, param_sets)
            queued = (
                f"#{number:<5} enqueued  {_params_text(params) or '(every parameter sampled)'}"
                for number, params in zip(enqueued["numbers"], param_sets, strict=True)
            )
            emit(enqueued, "\n".join(queued))
        elif command in ("stop", "resume"):
            study = client.stop_study(args.name) if command == "stop" else client.resume_study(args.name)
            emit(study, f"{study['name']}: {study['state']}")
        elif command == "delete":
            # An unknown study fails at the look-up, and a running one at the delete: neither is asked about.
            found = client.get_study(args.name) if not args.yes else None
            if found is not None and found["state"] not in ("running", "stopping"):
                trials = sum(found["trial_counts"].values())
                question = f"delete study {found['name']} ({found['state']}) and its {trials} trials? [y/N] "
                if not _confirmed(question):
                    print(f"{args.name}: not deleted", file=sys.stderr)
                    return EXIT_DECLINED
            client.delete_study(args.name)
            emit({"deleted": args.name}, f"deleted {args.name}")
        elif command == "best":
            choice = _model_choice(args)
            study = client.get_study(args.name)
            shown: dict[str, Any] | None
            if study.get("pareto_front_size") is not None:
                # Several objectives: the front, not one best trial.
                shown = client.pareto(args.name)
                if not shown["trials"]:
                    raise UsageError(f"study {args.name!r} has no completed trial on its Pareto front yet")
                text = front_text(shown)
            else:
                shown = study.get("best_trial")
                if shown is None:
                    raise UsageError(f"study {args.name!r} has no completed trial yet")
                text = _trial_line(shown)
            if args.download:
                download = getattr(client, "download_best_model", None)
                if download is None:
                    raise UsageError("this version cannot download models yet")
                try:
                    folder = download(args.name, Path(args.download), **choice)
                except OSError as error:
                    raise UsageError(_write_problem(args.download, error)) from None
                text += f"\nmodel saved to {folder}" if choice else f"\nbest model saved to {folder}"
            emit(shown, text)
        elif command == "watch":
            from tunefleet.watch import watch_study

            study = watch_study(client, args.name, interval_s=args.interval)
            emit(study, _show(study))
        elif command == "report":
            out = Path(args.out)
            html = client.report_html(args.name)
            try:
                out.write_text(html, encoding="utf-8")
            except OSError as error:
                raise UsageError(_write_problem(out, error)) from None
            emit({"report": str(out)}, f"report written to {out}")
    return 0


def _confirmed(question: str) -> bool:
    """Ask on stderr (stdout stays the command's output) and read one line; only y or yes says yes."""
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")  # end of input, too, is a no


def _write_problem(path: str | Path, error: OSError) -> str:
    """A file or folder that could not be written, as one line: where, and the system's reason."""
    where = error.filename if error.filename is not None else path
    return f"cannot write {where}: {error.strerror or error}"


def add_study_parser(sub: argparse._SubParsersAction) -> None:
    """Register `study` and its subcommands; --url and --json work after any of them."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("TUNEFLEET_URL", DEFAULT_URL),
        help="the service (TUNEFLEET_URL, default %(default)s)",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    study = sub.add_parser("study", help="create, list, show and control studies through the REST API")
    study_sub = study.add_subparsers(dest="study_command", required=True)

    create = study_sub.add_parser(
        "create", parents=[common], help="create a study from a YAML spec file or a preset's name"
    )
    create.add_argument("file", help="a YAML or JSON spec file, or a preset in studies/presets/ by name")
    create.add_argument(
        "--set",
        action="append",
        metavar="KEY.PATH=VALUE",
        help="override a spec field, e.g. budget.n_trials=100",
    )
    listing = study_sub.add_parser(
        "list", parents=[common], help="the studies (newest first), state and best value"
    )
    listing.add_argument("--offset", type=int, default=0)
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (
        ("show", "one study: state, progress, best trial"),
        ("stop", "stop claiming; running trials stop at their next epoch"),
        ("resume", "reopen a stopped study"),
    ):
        study_sub.add_parser(name, parents=[common], help=text).add_argument("name")
    delete = study_sub.add_parser(
        "delete",
        parents=[common],
        help="delete a stopped, failed or completed study and its trials (asks first)",
    )
    delete.add_argument("name")
    delete.add_argument("--yes", "-y", action="store_true", help="delete without asking")
    trials = study_sub.add_parser("trials", parents=[common], help="a page of a study's trials")
    trials.add_argument("name")
    trials.add_argument("--state", choices=["running", "complete", "pruned", "fail", "waiting"])
    trials.add_argument("--offset", type=int, default=0)
    trials.add_argument("--limit", type=int, default=100)
    enqueue = study_sub.add_parser(
        "enqueue",
        parents=[common],
        help="queue known parameter sets to run first (each takes a trial of the budget)",
    )
    enqueue.add_argument("name")
    enqueue.add_argument(
        "file",
        help="a YAML or JSON file with one set (name: value) or a list of them; - reads stdin."
        " Parameters left out are sampled",
    )
    best = study_sub.add_parser(
        "best",
        parents=[common],
        help="the best trial, or the Pareto front of several objectives (and a model, with --download)",
    )
    best.add_argument("name")
    best.add_argument("--download", metavar="DIR", help="save the best fine-tuned model into DIR")
    best.add_argument(
        "--trial", type=int, help="with --download: this trial's model (one on the Pareto front)"
    )
    best.add_argument(
        "--prefer",
        metavar="METRIC",
        help="with --download: the front's trial best in METRIC, within every --max and --min bound",
    )
    best.add_argument("--max", action="append", metavar="METRIC=NUMBER", help="with --prefer: an upper bound")
    best.add_argument("--min", action="append", metavar="METRIC=NUMBER", help="with --prefer: a lower bound")
    watch = study_sub.add_parser("watch", parents=[common], help="a live progress bar until the study ends")
    watch.add_argument("name")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    report = study_sub.add_parser("report", parents=[common], help="write a self-contained HTML report")
    report.add_argument("name")
    report.add_argument("--out", required=True, help="the HTML file to write")
    study.set_defaults(func=run_study_command)
