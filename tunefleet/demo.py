"""`tunefleet demo` (what `make run` runs): service, workers and the built-in study on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from studies.spec import load_spec_file, preset_path
from studies.storage import DEFAULT_DATABASE_URL, describe_store
from tunefleet.client import ApiError, TunefleetClient
from tunefleet.study_cli import front_text
from tunefleet.watch import watch_study

SERVICE_START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs and how it ends."""

    preset: str
    port: int
    workers: int
    exit_when_done: bool
    log_dir: Path


class Processes:
    """The child processes the demo started; all of them are stopped on the way out."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def start(self, name: str, args: list[str], *, log: bool = True) -> subprocess.Popen[bytes]:
        """Start `python -m tunefleet.cli ARGS` in its own session, logging to log_dir/NAME.log."""
        out: IO[bytes] | None = None
        if log:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop_all
            self._logs.append(out)
        # Own session: the terminal's Ctrl-C reaches only the demo, which then stops the children in order.
        process = subprocess.Popen(
            [sys.executable, "-m", "tunefleet.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=True,
        )
        self.children.append((name, process))
        return process

    def dead(self) -> list[str]:
        """Names of children that exited on their own."""
        return [name for name, p in self.children if p.poll() is not None]

    def stop_all(self) -> None:
        """SIGTERM every child (workers hand their trial back), then SIGKILL what outlives the grace period."""
        for _, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, process in self.children:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for out in self._logs:
            out.close()


def _said_in(log: Path) -> str:
    """The one-line error `tunefleet serve` ended with (a taken port, a bad setting), as ": reason"; else ""."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    said = [
        line.removeprefix("tunefleet: error: ") for line in lines if line.startswith("tunefleet: error: ")
    ]
    return f": {said[-1]}" if said else ""


def _wait_for_service(client: TunefleetClient, service: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVICE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise RuntimeError(f"the service exited at start-up{_said_in(log)}; see {log}")
        if client.healthy():
            return
        time.sleep(0.3)
    raise RuntimeError(f"the service did not answer within {SERVICE_START_TIMEOUT_S:.0f}s; see {log}")


def _create(client: TunefleetClient, spec: dict[str, Any]) -> dict[str, Any]:
    base = spec["name"]
    for attempt in range(1, 1000):
        name = base if attempt == 1 else f"{base}-{attempt}"
        try:
            return client.create_study({**spec, "name": name})
        except ApiError as error:
            if error.code != "study_exists":
                raise
    raise RuntimeError(f"could not find a free study name after {base}-999")


def _watch(client: TunefleetClient, name: str, processes: Processes) -> dict[str, Any]:
    workers = [n for n, _ in processes.children if n.startswith("worker")]

    def check() -> None:
        if len([n for n in processes.dead() if n.startswith("worker")]) == len(workers):
            raise RuntimeError(f"every worker exited; see {processes.log_dir}/worker-*.log")

    return watch_study(client, name, check=check)


def _report(study: dict[str, Any], base_url: str, client: TunefleetClient) -> None:
    best = study["best_trial"]
    counts = study["trial_counts"]
    print(
        f"\nstudy {study['name']}: {study['state']}; {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed"
    )
    if study.get("pareto_front_size") is not None:
        # Several objectives have no one best trial: the trade-off is the front, as `tunefleet study best` shows it.
        print(front_text(client.pareto(study["name"])))
    elif best is None:
        print("no trial completed")
    else:
        attrs = best["user_attrs"]
        print(
            f"best trial #{best['number']}: val_loss {best['value']:.4f}, val_accuracy {attrs['val_accuracy']:.3f}"
        )
        for key, value in best["params"].items():
            print(f"  {key:<14} {value}")
    print(f"\ndashboard: {base_url}{study['dashboard_url']}")
    print(f"REST API:  {base_url}/v1/studies/{study['name']}   (docs: {base_url}/docs)")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(options: DemoOptions) -> int:
    """Start the service and workers, run the preset study through the REST API, show the result."""
    # The children run in their own sessions, so the demo must stop them however it is stopped: Ctrl-C
    # (even where a parent shell left SIGINT ignored, as it does for background jobs), `kill`, or a
    # closed terminal. Python's default for SIGTERM and SIGHUP would end the demo and leave the service
    # and workers running. An ignored SIGHUP stays ignored: under nohup the demo is to outlive the terminal.
    previous = {
        signum: signal.signal(signum, _stop)
        for signum in STOP_SIGNALS
        if not (signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN)
    }
    base_url = f"http://127.0.0.1:{options.port}"
    path = Path(options.preset)
    spec = load_spec_file(path if path.suffix in (".yaml", ".yml", ".json") else preset_path(options.preset))
    processes = Processes(options.log_dir)
    # The service it starts inherits the environment, so it may require this token.
    client = TunefleetClient(base_url, token=os.environ.get("TUNEFLEET_API_TOKEN"))
    try:
        if client.healthy():
            raise RuntimeError(f"port {options.port} is already serving; stop it or pass --port")
        print(
            f"starting the service on {base_url}"
            f" (store: {describe_store(os.environ.get('TUNEFLEET_DATABASE_URL', DEFAULT_DATABASE_URL))})"
        )
        service = processes.start("service", ["serve", "--port", str(options.port)])
        _wait_for_service(client, service, options.log_dir / "service.log")
        study = _create(client, spec)
        name = study["name"]
        print(f"created study {name} through POST /v1/studies ({study['n_trials']} trials)")
        warm = processes.start("warm-cache", ["worker", "--warm-cache", "--study", name], log=False)
        if warm.wait() != 0:
            raise RuntimeError("building the feature cache failed (see the message above)")
        # A one-shot step: once it has ended well it is no child to watch over.
        processes.children.remove(("warm-cache", warm))
        for index in range(options.workers):
            processes.start(f"worker-{index}", ["worker", "--study", name])
        print(f"started {options.workers} workers (logs in {options.log_dir}/)")
        study = _watch(client, name, processes)
        _report(study, base_url, client)
        if options.exit_when_done:
            return 0 if study["state"] == "completed" else 1
        print("\nthe service stays up for the dashboard; press Ctrl-C to stop everything")
        while not processes.dead():
            time.sleep(1.0)
        print(f"a child process exited unexpectedly: {processes.dead()}; see {options.log_dir}/")
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except (RuntimeError, ApiError) as error:
        print(f"tunefleet demo: error: {error}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C (or kill) while the children stop must not leave some of them running.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        client.close()
        processes.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
