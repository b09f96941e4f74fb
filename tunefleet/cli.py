"""The `tunefleet` command: serve, worker, study and demo; each imports its side of the system lazily."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tunefleet.study_cli import UsageError, add_study_parser

if TYPE_CHECKING:
    import socket

    from pydantic import ValidationError
    from pydantic_settings import BaseSettings

EXIT_USAGE = 2
_Settings = TypeVar("_Settings", bound="BaseSettings")
_SECRET_FIELDS = frozenset({"api_token", "database_url"})


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def port_number(value: str) -> int:
    """An argparse type: a TCP port, 0 to 65535."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, got {port}")
    return port


def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def settings_problem(error: ValidationError, flags: dict[str, str]) -> str:
    """A settings error as one line naming what the user set: the flag if one was given, else the variable."""
    parts = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        name = flags.get(field, f"TUNEFLEET_{field.upper()}")
        # A token or a database URL (its password) is never echoed back.
        shown = "" if field in _SECRET_FIELDS else f" (got {item['input']!r})"
        parts.append(f"{name}: {item['msg']}{shown}")
    return "; ".join(parts)


def build_settings(cls: type[_Settings], flags: dict[str, tuple[str, Any]]) -> _Settings:
    """Settings from TUNEFLEET_* variables and the flags given ({field: (flag, value or None)})."""
    from pydantic import ValidationError

    overrides = {field: value for field, (_, value) in flags.items() if value is not None}
    try:
        return cls(**overrides)
    except ValidationError as error:
        named = {field: flag for field, (flag, value) in flags.items() if value is not None}
        raise CliError(settings_problem(error, named)) from None


def store_problem(error: Exception, database_url: str) -> CliError:
    """A store that cannot be opened, as one line without the URL's password."""
    from studies import mask_url
    from studies.storage import redact_password

    # A driver's message may quote its connection string, password and all.
    message = redact_password(f"{type(error).__name__}: {error}", database_url)
    return CliError(f"cannot open the store {mask_url(database_url)}: {message}".replace("\n", " "))


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind the service's socket before anything says it serves, so a taken port is one line, not a traceback."""
    import socket

    # As uvicorn binds when it is handed sockets: IPv6 for an address with a colon, else IPv4.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise CliError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def _setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("TUNEFLEET_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the REST API and the dashboard on one port."""
    import uvicorn

    from service import ServiceSettings, create_app
    from service.auth import AuthConfigError, load_tokens
    from studies import mask_url

    _setup_logging()
    log = logging.getLogger("tunefleet.service")
    settings = build_settings(ServiceSettings, {"host": ("--host", args.host), "port": ("--port", args.port)})
    try:
        tokens = load_tokens(settings)
    except AuthConfigError as error:
        raise CliError(str(error)) from None
    if not tokens and not _is_loopback(settings.host) and not args.insecure:
        raise CliError(
            f"refusing to serve an open API on {settings.host}: set TUNEFLEET_API_TOKEN "
            "(or TUNEFLEET_API_TOKENS_FILE), or pass --insecure"
        )
    sock = listening_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    if not tokens:
        log.warning(
            "the API is open: no TUNEFLEET_API_TOKEN or TUNEFLEET_API_TOKENS_FILE is set, so anyone who "
            "reaches %s:%d can create, stop and delete studies",
            settings.host,
            port,
        )
    try:
        app = create_app(settings, tokens=tokens)
    except Exception as error:
        sock.close()
        raise store_problem(error, settings.database_url) from None
    log.info("serving on http://%s:%d (store %s)", settings.host, port, mask_url(settings.database_url))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0 if server.started else 1


def _launch(args: argparse.Namespace) -> int:
    from worker.launcher import parse_gpus, supervise

    child_args: list[str] = []
    for name in args.study or []:
        child_args += ["--study", name]
    if args.max_trials is not None:
        child_args += ["--max-trials", str(args.max_trials)]
    if args.exit_when_idle:
        child_args.append("--exit-when-idle")
    if args.gpus:
        try:
            gpus = parse_gpus(args.gpus, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
        except ValueError as error:
            raise CliError(str(error)) from error
        # Each child sees exactly one GPU, as device 0: no worker can touch another's memory.
        slots = [(f"gpu{gpu}" if gpu.isdigit() else gpu, {"CUDA_VISIBLE_DEVICES": gpu}) for gpu in gpus]
        child_args += ["--device", "cuda"]
    else:
        slots = [(f"proc{i}", {}) for i in range(args.processes)]
        if args.device:
            child_args += ["--device", args.device]
    return supervise(child_args, slots)


def cmd_worker(args: argparse.Namespace) -> int:
    """Pull and run trials (or only build the feature cache of a study, with --warm-cache)."""
    _setup_logging()
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
    from worker.settings import WorkerSettings

    settings = build_settings(WorkerSettings, {"device": ("--device", args.device)})
    try:
        runner, identity = build_runner(settings)
    except DeviceError as error:
        raise CliError(str(error)) from None
    except (ArgumentError, ImportError, OSError) as error:
        # A URL no driver reads, a SQLite file whose folder cannot be made; an unreachable database is
        # retried instead, as an outage is.
        raise store_problem(error, settings.database_url) from None
    if args.warm_cache:
        if not args.study or len(args.study) != 1:
            raise CliError("--warm-cache needs exactly one --study NAME")
        from tqdm import tqdm

        task = runner.repository.get(args.study[0]).spec.task
        if task.kind == "synthetic" or task.finetune != "head":
            # Only head studies train on cached encoder features; last-k and full run the encoder itself.
            kind = "synthetic" if task.kind == "synthetic" else task.finetune
            print(f"nothing to warm: a {kind} study uses no feature cache")
            return 0
        with tqdm(desc="feature cache (one time)", unit="text", leave=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            runner.features(task, progress=progress)
        return 0
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the built-in study end to end on this machine."""
    from tunefleet.demo import DemoOptions, run_demo

    # The demo talks to the service it starts at a port it must know.
    if args.port == 0:
        raise CliError("--port 0 picks any free port, which the demo cannot then find: give a port")
    return run_demo(
        DemoOptions(
            preset=args.preset,
            port=args.port,
            workers=args.workers,
            exit_when_done=args.exit,
            log_dir=Path(args.log_dir),
        )
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="tunefleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the REST API and optuna-dashboard")
    serve.add_argument("--host", help="address to bind (TUNEFLEET_HOST, default 127.0.0.1)")
    serve.add_argument(
        "--port", type=port_number, help="port (TUNEFLEET_PORT, default 8000; 0: any free one)"
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving without a token (TUNEFLEET_API_TOKEN) on an address other than loopback",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="pull and run trials from the shared store")
    worker.add_argument("--study", action="append", help="only this study (repeat for several)")
    worker.add_argument("--max-trials", type=positive_int, help="exit after this many trials")
    worker.add_argument("--exit-when-idle", action="store_true", help="exit when no trial is left to claim")
    worker.add_argument(
        "--warm-cache", action="store_true", help="only build the study's feature cache, then exit"
    )
    worker.add_argument("--device", help="auto (default), cpu, cuda or cuda:N (TUNEFLEET_DEVICE)")
    fleet = worker.add_mutually_exclusive_group()
    fleet.add_argument(
        "--gpus", help="one worker process per GPU: 'all' or indexes like 0,1 (restarted on crash)"
    )
    fleet.add_argument(
        "--processes", type=positive_int, help="N worker processes without GPU pinning (restarted on crash)"
    )
    worker.set_defaults(func=cmd_worker)

    add_study_parser(sub)

    demo = sub.add_parser("demo", help="run the built-in study end to end on this machine")
    demo.add_argument(
        "--preset", default="bbc-news-minilm", help="a preset name in studies/presets/, or a spec file"
    )
    demo.add_argument("--port", type=port_number, default=8000)
    demo.add_argument("--workers", type=positive_int, default=2)
    demo.add_argument("--exit", action="store_true", help="exit when the study is done instead of serving on")
    demo.add_argument("--log-dir", default=".tunefleet/logs", help="where the service and worker logs go")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tunefleet` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (CliError, UsageError) as error:
        print(f"tunefleet: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        from pydantic import ValidationError

        from studies.errors import TunefleetError
        from tunefleet.client import ApiError

        if isinstance(error, ApiError | TunefleetError | ValidationError):
            message = str(error).replace("\n", " ")
            print(f"tunefleet: error: {message}", file=sys.stderr)
            return EXIT_USAGE
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
