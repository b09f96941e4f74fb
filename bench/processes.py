"""A benchmark's child processes: started together, told when to go, read back, stopped; their CPU and their PostgreSQL backends'."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def clean_up_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a benchmark stopped from outside still runs its clean-up."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def python_module(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields we want follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def backend_pids(engine: sa.Engine, application_name: str) -> list[int]:
    """The PostgreSQL server processes serving sessions with this application_name."""
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalars()
        )


class BackendCpu:
    """CPU the PostgreSQL backends serving one application_name used between begin() and end_s()."""

    def __init__(self, admin: sa.Engine, application_name: str) -> None:
        self.admin = admin
        self.application_name = application_name
        self.start: dict[int, float] = {}

    def _sample(self) -> dict[int, float]:
        found = {pid: process_cpu_s(pid) for pid in backend_pids(self.admin, self.application_name)}
        return {pid: used for pid, used in found.items() if used is not None}

    def begin(self) -> None:
        self.start = self._sample()

    def end_s(self) -> float:
        # A backend started during the run counts whole; one that ended during it is lost (rare: pools keep theirs).
        return sum(used - self.start.get(pid, 0.0) for pid, used in self._sample().items())


class Processes:
    """Child processes started together, each logging its stderr to a file.

    With pipes, each takes lines on stdin and answers on stdout: "ready" once started, then JSON.
    Without, stdout goes to the log too and the caller watches them some other way.
    """

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        logdir: Path,
        label: str,
        *,
        pipes: bool = True,
        env: Mapping[str, str] | None = None,
        grace_s: float = 20.0,
    ) -> None:
        self.grace_s = grace_s
        self.logs = [logdir / f"{label}-{index}.log" for index in range(len(commands))]
        self.processes: list[subprocess.Popen[str]] = []
        try:
            for command, log in zip(commands, self.logs, strict=True):
                with log.open("wb") as out:
                    self.processes.append(
                        subprocess.Popen(
                            list(command),
                            cwd=ROOT,
                            env=None if env is None else dict(env),
                            stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if pipes else out,
                            stderr=out if pipes else subprocess.STDOUT,
                            text=True,
                        )
                    )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def any_exited(self) -> bool:
        return any(p.poll() is not None for p in self.processes)

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(p.read_text(errors="replace")[-chars:] for p in self.logs if p.exists())

    def failure(self, what: str) -> RuntimeError:
        """An error that says what went wrong, with the end of every process's log."""
        return RuntimeError(f"{what}:\n{self.log_tail()}")

    def cpu_s(self) -> float:
        """CPU seconds the processes have used so far (every thread, user and system)."""
        total = 0.0
        for process in self.processes:
            used = process_cpu_s(process.pid)
            if used is None:
                raise self.failure(f"process {process.pid} exited unexpectedly")
            total += used
        return total

    def signal(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def send(self, line: str, index: int | None = None) -> None:
        """Write one line to every process's stdin, or to one's."""
        for process in self.processes if index is None else [self.processes[index]]:
            assert process.stdin is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()

    def read_line(self, index: int) -> str:
        """The next line process `index` writes; an error if it ended instead."""
        process = self.processes[index]
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise self.failure(f"process {process.pid} ended")
        return line.strip()

    def wait_ready(self, what: str) -> None:
        """Wait until every process has said "ready"."""
        for index in range(len(self.processes)):
            if self.read_line(index) != "ready":
                raise self.failure(f"{what} did not start")

    def results(self, timeout_s: float) -> list[Any]:
        """Each process's last line of output, as JSON, once it has exited cleanly."""
        out = []
        for process in self.processes:
            output, _ = process.communicate(timeout=timeout_s)
            lines = (output or "").strip().splitlines()
            if process.returncode != 0 or not lines:
                raise self.failure(f"process {process.pid} failed (exit status {process.returncode})")
            out.append(json.loads(lines[-1]))
        return out

    def close(self) -> None:
        """End every process still running: end of input, SIGCONT and SIGTERM, then SIGKILL after grace_s.

        With no grace, SIGKILL at once: for processes that would not act on SIGTERM in time.
        """
        grace_s = self.grace_s
        for process in self.processes:
            if process.stdin is not None and not process.stdin.closed:
                with contextlib.suppress(OSError):  # it has gone already
                    process.stdin.close()
        if grace_s > 0:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
