"""numpy's AVX-512 code turned off in the replay benchmark's processes, so that its runs are the same on every x86-64 CPU."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# numpy picks its vector code for log, exp and the like by the CPU, and its AVX-512 code (from Intel's SVML, which
# allows up to 4 ULP of error) returns other last bits than its AVX2 code for a few values in a thousand. TPE's
# densities and the peers' models read them: the same seed replayed on an AVX-512 machine and on one without drew
# other configurations partway through a run. With that code off, both run numpy's AVX2 code.
DISABLE = "NPY_DISABLE_CPU_FEATURES"


def _umath() -> Any:
    # numpy keeps what it dispatches to in its private core module: numpy._core from 2.0, numpy.core before (the
    # peers' environment has numpy 1.26).
    try:
        return importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:
        return importlib.import_module("numpy.core._multiarray_umath")


def avx512_in_use() -> list[str]:
    """numpy's dispatched AVX-512 targets that this process uses: none where the CPU lacks them or they are off."""
    umath = _umath()
    features = umath.__cpu_features__
    return [
        name
        for name in umath.__cpu_dispatch__
        if ("AVX512" in name or name == "X86_V4") and features.get(name)
    ]


def rerun_without_avx512(module: str) -> None:
    """Where numpy uses its AVX-512 code in this process, run `python -m module` again with the same arguments in
    its place, with that code off (numpy reads the setting once, when it is first imported). A setting of the
    caller's own is left as it is."""
    targets = avx512_in_use()
    if not targets or DISABLE in os.environ:
        return
    sys.stdout.flush()
    os.execve(
        sys.executable,
        [sys.executable, "-m", module, *sys.argv[1:]],
        {**os.environ, DISABLE: " ".join(targets)},
    )


def numpy_cpu() -> dict[str, Any]:
    """What a results file records of it: the AVX-512 targets in use (none) and the setting that turned them off."""
    return {"numpy_avx512": avx512_in_use(), DISABLE: os.environ.get(DISABLE)}


if __name__ == "__main__":
    rerun_without_avx512("bench.replay.numpy_cpu")
    print(" ".join(avx512_in_use()) or "none")
