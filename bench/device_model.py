"""Writes an encoder folder with the built-in MiniLM's architecture and tokenizer but random weights.

The device machine cannot install the built-in model's package (no network) and its 92 MB of weights are
more than a device call may carry. Throughput and MFU depend on the shapes, not on the weights, so benchmark 3
on a GPU runs on this folder (`--model`): `python -m bench.device_model SOURCE DEST`, where SOURCE holds the
built-in model's config.json and tokenizer files (bench/device_pack.py copies them).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

# What a tokenizer and a model config are made of; the weights are made here, not read.
CARRIED_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def write_random_encoder(source: Path, dest: Path, seed: int = 0) -> Path:
    """dest gets source's config and tokenizer files and a model of that config with seeded random weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in CARRIED_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)
    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(dest, local_files_only=True)).save_pretrained(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder with the model's config.json and tokenizer files")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    print(f"random-weight encoder written to {write_random_encoder(args.source, args.dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
