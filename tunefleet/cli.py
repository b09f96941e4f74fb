"""The `tunefleet` command: serve, worker, study and demo; each imports its side of the system lazily."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tunefleet.study_cli import UsageError, add_study_parser

if TYPE_CHECKING:
    import socket


EXIT_USAGE = 2


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


# The same as studies.startup.positive_int, kept apart on purpose: importing anything from studies loads
# SQLAlchemy and Optuna, and `tunefleet --help` or a usage error should answer without them.
def positive_int(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


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
    from service.serving import AnnouncingServer
    from studies.startup import build_settings, check_store, store_problem
    from studies.storage import describe_store

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
    # The service makes the store it is pointed at; a URL that cannot be right is one line, not a retry loop.
    check_store(settings.database_url, create=True)
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
    server = AnnouncingServer(
        uvicorn.Config(app, log_level="warning"),
        f"serving on http://{settings.host}:{port} (store {describe_store(settings.database_url)})",
        log,
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1


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

    # Its flags are the worker side's own (worker/command.py): main hands them over unparsed.
    sub.add_parser("worker", help="pull and run trials from the shared store", add_help=False)

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
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "worker":
        # Imported only now: the worker side (torch and all) is no part of the other subcommands.
        from worker.command import main as worker_main

        return worker_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
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
        from studies.startup import StartupError
        from tunefleet.client import ApiError

        if isinstance(error, ApiError | TunefleetError | ValidationError | StartupError):
            message = str(error).replace("\n", " ")
            print(f"tunefleet: error: {message}", file=sys.stderr)
            return EXIT_USAGE
        raise
    return code


if __name__ == "__main__":
    sys.exit(main())
