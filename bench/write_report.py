"""Gathers bench/results/*.json into BENCHMARKS.md: the machine, the versions, each table, each target."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

ORDER = {
    "time_to_good_model": "1. Time to a good model",
    "coordination_overhead": "2. Coordination overhead",
    "finetune_throughput": "3. Fine-tuning throughput",
    "store_scale": "4. Scale of the store",
}


# Extra runs of a benchmark, reported after the four when their results are present.
EXTRA = {
    "time_to_good_model_tweets": "1b. Time to a good model on the tweets preset (a task that does not saturate as fast)",
    "claim_phases": "2b. Where a TPE claim's time goes at 5,000 trials, with 1 and with 8 workers on 2 cores",
    "finetune_throughput_gpu": "3b. Fine-tuning throughput on a GPU (head, last-k, full with bf16; MFU)",
    "early_stopping": "1c. Early stopping: the CPU random trials spend after their validation loss stalls",
    "early_stopping_tweets": "1d. Early stopping on the tweets preset",
    "time_to_good_model_mlp": "1e. Time to a good model on the mlp-bbc-news preset (kind torch-module: a pretrained MLP, fine-tuned)",
    "pruner_decision": "2d. What a Hyperband pruner decision costs a worker after each epoch, tunefleet's against Optuna's",
    "trial_api_overhead": "2c. What a kind python trial (the Trial API) costs per trial, against the built-in synthetic task",
    "store_scale_paced_256": "4b. Scale of the store: the paced 256-worker fleet behind PgBouncer, longer windows",
    "latency_spread": "3d. How far to trust latency_ms: the measurement's own spread, run to run",
    "time_to_good_model_conditional_head": "1f. Width and activation only for hidden layers",
    "time_to_good_model_conditional_head_full": "1f. Width and activation only for hidden layers (whole data set)",
    "replay-bbc-news-minilm": "1g. The replay benchmark on bbc-news-minilm",
    "replay-warm-bbc-news-minilm": "1h. Warm start on the replay benchmark, each task held out in turn",
    "replay-warm-tweets-sentiment-minilm": "1h. Warm start on the replay benchmark, tweets-sentiment-minilm held out",
    "replay-warm-rotten-tomatoes-minilm": "1h. Warm start on the replay benchmark, rotten-tomatoes-minilm held out",
    "replay-tweets-sentiment-minilm": "1i. The replay benchmark on tweets-sentiment-minilm",
    "replay-mlp-bbc-news": "1j. The replay benchmark on mlp-bbc-news (a pretrained MLP, fine-tuned whole)",
    "replay-rotten-tomatoes-minilm": "1k. The replay benchmark on rotten-tomatoes-minilm (a data set from PyPI)",
    "replay-startup-bbc-news-minilm": "1l. Five random start-up trials instead of ten, on the four recorded tasks",
    "replay-startup-mlp-bbc-news": "1l. Five random start-up trials, mlp-bbc-news",
    "replay-startup-rotten-tomatoes-minilm": "1l. Five random start-up trials, rotten-tomatoes-minilm",
    "replay-startup-tweets-sentiment-minilm": "1l. Five random start-up trials, tweets-sentiment-minilm",
    "replay-asha5-bbc-news-minilm": "1m. Pause and promote with five start-up trials, on bbc-news-minilm",
    "replay-fidelity-size": "1n. The surrogate's fidelity against the configurations it is fitted on",
    "time_to_good_model_tweets_20": "1o. Real training and the replay at the same budget",
    "replay-budget-bbc-news-minilm": "1o.1 The replay at section 1's budget, bbc-news-minilm",
    "replay-budget-tweets-sentiment-minilm": "1o.2 The replay at section 1o's budget, tweets-sentiment-minilm",
    "replay-budget-mlp-bbc-news": "1o.3 The replay at section 1e's budget, mlp-bbc-news",
    "replay-budget100-bbc-news-minilm": "1p. The replay's figure against the budget",
    "replay-budget100-tweets-sentiment-minilm": "1p.1 100 random trials' compute, tweets-sentiment-minilm",
    "replay-budget100-mlp-bbc-news": "1p.2 100 random trials' compute, mlp-bbc-news",
    "replay-budget100-rotten-tomatoes-minilm": "1p.3 100 random trials' compute, rotten-tomatoes-minilm",
    "replay-budget200-mlp-bbc-news": "1p.4 200 random trials' compute, mlp-bbc-news",
    "lora_vs_last_k": "3c. LoRA against last-k on the same encoder and data",
}
# A section written by hand (prose beside its tables): bench/sections/NAME.md stands for NAME's generated section,
# and an empty file says another section already covers NAME's results. A line TABLES in it stands for the tables
# of NAME's results file, so that a rerun's figures reach the report without being copied by hand.
SECTIONS = Path("bench/sections")
TABLES = "{tables}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "none"


def versions() -> str:
    names = ["optuna", "torch", "sqlalchemy", "psycopg", "fastapi", "transformers"]
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def verdict(met: Any) -> str:
    return {True: "met", False: "**not met**", None: "not applicable at this size"}[met]


class MissingTables(Exception):
    """A hand-written section asks for tables that its results file does not hold."""


def section(name: str, result: dict[str, Any]) -> str:
    written = SECTIONS / f"{name}.md"
    if written.exists():
        text = written.read_text()
        if not text.strip():
            return ""
        lines = text.rstrip("\n").split("\n")
        if TABLES in lines and "tables" not in result:
            raise MissingTables(
                f"{written} stands {TABLES} for the tables of bench/results/{name}.json, which has none (it was"
                " made before results kept their tables): run its benchmark again"
            )
        lines = [result["tables"] if line == TABLES else line for line in lines]
        return "\n".join(lines) + "\n"
    config = result.get("config", {})
    lines = [f"## {ORDER.get(name, EXTRA.get(name, name))}", ""]
    command = config.get("command")
    markdown = result.get("markdown", "(no table)")
    if command:
        said = f"Command: `{command}`"
        lines += [said, ""]
        # Said once, atop the section: the store benchmarks' results made before now repeat it under their tables.
        markdown = "\n".join(line for line in markdown.split("\n") if line != said)
    lines += [markdown, ""]
    targets = result.get("targets", [])
    if targets:
        lines += ["| target | figure | verdict |", "| --- | --- | --- |"]
        lines += [f"| {t['target']} | {t['figure']} | {verdict(t['met'])} |" for t in targets]
        lines.append("")
    if "wall_s" in config:
        lines += [f"Wall time of this benchmark: {config['wall_s']} s.", ""]
    return "\n".join(lines)


def main() -> int:
    results_dir = Path("bench/results")
    results = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}
    if not results:
        print("no results in bench/results: run `make bench` or `make bench-quick` first", file=sys.stderr)
        return 2
    head = [
        "# Benchmarks",
        "",
        "Made by `make bench` (or `make bench-quick`); each script prints its table, and `python -m bench.write_report`",
        "gathers them here. Every figure that matters is a ratio against a baseline measured in the same run on the",
        "same machine: benchmark machines are often shared and noisy, so compare ratios, not absolute times.",
        "",
        f"- Written: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {os.cpu_count()} cores, {cpu_model()}; GPU: {gpu()}",
        f"- Versions: {versions()}",
        "",
    ]
    # Extra runs after the four, in the order of their titles ("1b" before "4b").
    extras = sorted((name for name in results if name not in ORDER), key=lambda name: EXTRA.get(name, name))
    try:
        body = [section(name, results[name]) for name in [*(n for n in ORDER if n in results), *extras]]
    except MissingTables as error:
        print(error, file=sys.stderr)
        return 2
    body = [text for text in body if text]
    missing = [title for name, title in ORDER.items() if name not in results]
    if missing:
        body.append("## Not measured in this run\n\n" + "\n".join(f"- {m}" for m in missing) + "\n")
    notes = Path("bench/NOTES.md")
    tail = [notes.read_text()] if notes.exists() else []
    Path("BENCHMARKS.md").write_text("\n".join(head + body + tail))
    print("wrote BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
