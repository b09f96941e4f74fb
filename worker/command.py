"""The worker command (`python -m worker`, `tunefleet worker`): its flags, its one-line errors, the loop it starts."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from studies.startup import (
    CREATE_STORE_FLAG,
    StartupError,
    build_settings,
    check_store,
    positive_int,
    store_problem,
)
from studies.storage import describe_store

if TYPE_CHECKING:
    from studies.spec import Task
    from worker.runner import TrialRunner

EXIT_USAGE = 2
PROG = "tunefleet worker"


def _setup_logging() -> None:
    # The feature cache and each epoch log at INFO (worker.features, worker.epochs); a library's progress bar
    # (transformers' "Loading weights") is no log line, and in a log file it is noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=os.environ.get("TUNEFLEET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _launch(args: argparse.Namespace) -> int:
    from worker.launcher import parse_gpus, supervise

    child_args: list[str] = []
    for name in args.study or []:
        child_args += ["--study", name]
    if args.max_trials is not None:
        child_args += ["--max-trials", str(args.max_trials)]
    if args.exit_when_idle:
        child_args.append("--exit-when-idle")
    if args.create_store:
        child_args.append(CREATE_STORE_FLAG)
    for allowed in args.allow_entrypoint or []:
        child_args += ["--allow-entrypoint", allowed]
    if args.gpus:
        try:
            gpus = parse_gpus(args.gpus, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
        except ValueError as error:
            raise StartupError(str(error)) from error
        # Each child sees exactly one GPU, as device 0: no worker can touch another's memory.
        slots = [(f"gpu{gpu}" if gpu.isdigit() else gpu, {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
        child_args += ["--device", "cuda"]
    else:
        slots = [(f"proc{i}", {}) for i in range(args.processes)]
        if args.device:
            child_args += ["--device", args.device]
    return supervise(child_args, slots)


def _warm_torch_module(runner: TrialRunner, task: Task) -> int:
    from worker.builtin_modules import is_builtin_module
    from worker.failures import TrialFailure

    if not is_builtin_module(task.model):
        print("nothing to warm: a torch-module study's model is its own file, loaded by each worker")
        return 0
    print(f"preparing {task.model} (built once per node, then reused)")
    try:
        runner.prepare(task)
    except TrialFailure as error:
        # The same reason its trials would fail with, as one line: the demo stops here rather than fail them all.
        raise StartupError(f"cannot prepare {task.model}: {error}") from None
    return 0


def _warm_cache(runner: TrialRunner, study_names: list[str] | None) -> int:
    if not study_names or len(study_names) != 1:
        raise StartupError("--warm-cache needs exactly one --study NAME")
    from tqdm import tqdm

    from worker.trial_task import trial_task

    spec = runner.repository.get(study_names[0]).spec
    task = spec.task
    if task.kind == "torch-module":
        return _warm_torch_module(runner, task)
    modes = spec.finetune_modes()
    if task.kind != "text-classification" or "head" not in modes:
        # Only head trials train on cached encoder features; last-k, full and lora run the encoder itself, and
        # synthetic and python studies have no encoder of tunefleet's.
        kind = task.kind if task.kind != "text-classification" else " or ".join(modes)
        print(f"nothing to warm: a {kind} study uses no feature cache")
        return 0
    # A study that searches finetune builds the cache its head trials read.
    task = trial_task(task, {"finetune": "head"})
    with tqdm(desc="feature cache (one time)", unit="text", leave=True) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        runner.prepare(task, progress=progress)
    return 0


def run(args: argparse.Namespace) -> int:
    """Pull and run trials (or only build the feature cache of a study, with --warm-cache)."""
    _setup_logging()
    from worker.data_roots import ROOTS_FLAG, ROOTS_SETTING
    from worker.settings import WorkerSettings

    if args.data_root:
        if any("," in folder for folder in args.data_root):
            raise StartupError(f"{ROOTS_FLAG}: a folder name with a comma cannot be a data root")
        # As the setting, so the task kinds and the launcher's children read the same roots.
        os.environ[ROOTS_SETTING] = ",".join(args.data_root)
    allowed = tuple(args.allow_entrypoint) if args.allow_entrypoint else None
    settings = build_settings(
        WorkerSettings,
        {
            "device": ("--device", args.device),
            "allowed_entrypoints": ("--allow-entrypoint", allowed),
            "data_roots": (ROOTS_FLAG, tuple(args.data_root) if args.data_root else None),
            "create_store": (CREATE_STORE_FLAG, True if args.create_store else None),
        },
    )
    # First, so a worker pointed at the wrong store (another folder's SQLite file, a typo) says which.
    logging.getLogger("tunefleet.worker").info("store %s", describe_store(settings.database_url))
    check_store(settings.database_url, create=settings.create_store)
    if args.gpus or args.processes is not None:
        return _launch(args)

    from sqlalchemy.exc import ArgumentError

    from worker.device import DeviceError
    from worker.loop import (
        LoopOptions,
        build_runner,
        freeze_startup_heap,
        install_signal_handlers,
        run_loop,
    )

    try:
        runner, identity = build_runner(settings)
    except DeviceError as error:
        raise StartupError(str(error)) from None
    except (ArgumentError, ImportError, OSError) as error:
        # A URL no driver reads, a SQLite file whose folder cannot be made; an unreachable database is
        # retried instead, as an outage is.
        raise store_problem(error, settings.database_url) from None
    if args.warm_cache:
        return _warm_cache(runner, args.study)
    install_signal_handlers(runner)
    frozen = freeze_startup_heap()
    logging.getLogger("tunefleet.worker").debug("%d start-up objects kept out of garbage collection", frozen)
    options = LoopOptions(
        study_names=tuple(args.study) if args.study else None,
        max_trials=args.max_trials,
        exit_when_idle=args.exit_when_idle,
    )
    run_loop(runner, identity, options, settings)
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The worker command's flags."""
    parser = argparse.ArgumentParser(prog=prog, description="pull and run trials from the shared store")
    parser.add_argument("--study", action="append", help="only this study (repeat for several)")
    parser.add_argument("--max-trials", type=positive_int, help="exit after this many trials")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when no trial is left to claim")
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="only build the study's feature cache (or its built-in model), then exit",
    )
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (TUNEFLEET_DEVICE)")
    parser.add_argument(
        CREATE_STORE_FLAG,
        action="store_true",
        help="create the SQLite store if its file does not exist (TUNEFLEET_CREATE_STORE); without it a worker"
        " only joins a store the service made",
    )
    parser.add_argument(
        "--allow-entrypoint",
        action="append",
        metavar="PACKAGE",
        help="kind python studies may run entry points under this package, or this package.module:function"
        " (repeat for several; replaces TUNEFLEET_ALLOWED_ENTRYPOINTS)",
    )
    parser.add_argument(
        "--data-root",
        action="append",
        metavar="FOLDER",
        help="studies' data files and local models must lie under this folder (repeat for several; replaces"
        " TUNEFLEET_DATA_ROOTS; default: the folder the worker starts in)",
    )
    fleet = parser.add_mutually_exclusive_group()
    fleet.add_argument(
        "--gpus", help="one worker process per GPU: 'all' or indexes like 0,1 (restarted on crash)"
    )
    fleet.add_argument(
        "--processes", type=positive_int, help="N worker processes without GPU pinning (restarted on crash)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the worker command on argv (default: this process's arguments); its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except StartupError as error:
        print(f"tunefleet: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from pydantic import ValidationError

        from studies.errors import TunefleetError

        if isinstance(error, TunefleetError | ValidationError):
            message = str(error).replace("\n", " ")
            print(f"tunefleet: error: {message}", file=sys.stderr)
            return EXIT_USAGE
        raise
