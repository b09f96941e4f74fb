"""The replay benchmark's processes run numpy without its AVX-512 code, so a seed replays alike on every x86-64 CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.replay.numpy_cpu import DISABLE, avx512_in_use

REPOSITORY = Path(__file__).resolve().parents[2]


def _python(*args: str, env: dict[str, str] | None = None) -> str:
    # By default the caller's own setting, if any, is left out: the machine's numpy decides.
    if env is None:
        env = {name: value for name, value in os.environ.items() if name != DISABLE}
    done = subprocess.run(
        [sys.executable, *args], cwd=REPOSITORY, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


IN_USE = "from bench.replay.numpy_cpu import avx512_in_use; print(' '.join(avx512_in_use()) or 'none')"


def test_an_entry_point_of_the_benchmark_runs_with_numpys_avx512_code_off() -> None:
    # Run as a program, the module runs itself again with that code off where numpy would use it; it then prints
    # the AVX-512 targets still in use.
    assert _python("-m", "bench.replay.numpy_cpu") == "none"


@pytest.mark.skipif(not avx512_in_use(), reason="numpy uses no AVX-512 code on this CPU: nothing to turn off")
def test_without_the_rerun_numpy_would_have_used_its_avx512_code_here() -> None:
    # What makes the test above mean something on this machine: a plain process of it uses that code.
    assert _python("-c", IN_USE) != "none"


def test_a_setting_of_the_callers_own_is_kept() -> None:
    # NPY_DISABLE_CPU_FEATURES given by the caller (empty here: turn nothing off) is not overridden, and the
    # module does not run itself again in a loop.
    env = {**os.environ, DISABLE: ""}
    expected = _python("-c", IN_USE, env=env)
    assert _python("-m", "bench.replay.numpy_cpu", env=env) == expected
