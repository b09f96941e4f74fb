"""The study spec's defaults as README.md shows them, generated from studies/spec.py: `make readme` rewrites them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from studies.names import (
    BUILTIN_DATA,
    EPOCH_METRICS,
    FINETUNE_MODES,
    PRUNER_NAMES,
    SAMPLER_NAMES,
    STUDY_NAME_PATTERN,
    TASK_KIND_NAMES,
)
from studies.spec import DEFAULT_COST_WEIGHT, DEFAULT_N_STARTUP_TRIALS, Space, StudySpec, Task

README = "README.md"
MARKER = "<!-- spec-defaults"
BEGIN = f"{MARKER}: generated from studies/spec.py by `make readme`; edit the code, not this block -->"
END = "<!-- /spec-defaults -->"
FIX_COMMAND = "make readme"
STUDY_NAME = "my-study"
COMMENT_COLUMN = 40


def _notes() -> dict[str, str]:
    """What each default means or what else it takes, by dotted path; the lists come from the spec's vocabulary."""
    default_data = Task().data
    others = [f"builtin:{name}" for name in BUILTIN_DATA if f"builtin:{name}" != default_data]
    return {
        "name": f"required: {STUDY_NAME_PATTERN}",
        "task.kind": " | ".join(TASK_KIND_NAMES),
        "task.model": "or a local Hugging Face model folder present on every worker",
        "task.data": "or " + ", ".join(others) + ", or your own files",
        "task.finetune": " | ".join(FINETUNE_MODES) + " (head: the encoder is frozen)",
        "task.k": "last-k only: how many top encoder blocks train",
        "task.max_length": "tokens per text",
        "task.max_examples": "null: all; a number: a seeded subset, for quick studies",
        "task.validation_fraction": "held out of train when there is no validation file",
        "task.data_seed": "the seed of that split",
        "space.finetune": "choices of task.finetune's modes: each trial draws its own",
        "space.encoder_learning_rate": "last-k and full only; absent, the encoder trains at learning_rate",
        "objective.metric": " | ".join(EPOCH_METRICS),
        "objective.direction": "follows the metric",
        "objective.value": "best: the best epoch's metric | final: the last's",
        "objective.patience": "epochs without a better metric before a trial ends; 0: all run",
        "sampler.name": " | ".join(SAMPLER_NAMES),
        "sampler.seed": "null: 0; each claim's sampler is seeded from it",
        "sampler.n_startup_trials": f"null: {DEFAULT_N_STARTUP_TRIALS} random trials first (tpe, gp), 1 (cmaes)",
        "sampler.cost_weight": f"tpe only; null: {DEFAULT_COST_WEIGHT} (0: Optuna's TPE unchanged)",
        "pruner.name": " | ".join(PRUNER_NAMES),
        "pruner.min_resource": "epochs",
        "budget.timeout_s": "null: no deadline",
        "budget.max_retries": "re-runs of a trial whose worker died",
        "budget.max_consecutive_failures": "the study fails when its first N trials fail alike; 0: never",
        "priority": "higher runs first when studies compete for workers",
    }


def _inline(value: Any) -> str:
    """A value as one line of YAML (flow style), keys in the spec's order."""
    # Wrapped in a list so a scalar comes out as flow YAML too; the brackets are then taken off again.
    text = yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10**6).strip()
    return text[1:-1]


def _line(text: str, note: str | None) -> str:
    if note is None:
        return text
    return f"{text:<{COMMENT_COLUMN - 1}} # {note}"


def defaults_yaml() -> str:
    """The spec of a study given only its name, as YAML with a comment on what each default means."""
    spec = StudySpec(name=STUDY_NAME).model_dump(mode="json")
    notes = _notes()
    lines: list[str] = []
    for key, value in spec.items():
        if not isinstance(value, dict):
            lines.append(_line(f"{key}: {_inline(value)}", notes.get(key)))
            continue
        lines.append(f"{key}:")
        width = max(len(name) for name in value) + 1
        for name, item in value.items():
            shown = f"{name}:".ljust(width) if key == "space" else f"{name}:"
            lines.append(_line(f"  {shown} {_inline(item)}", notes.get(f"{key}.{name}")))
        if key == "space":
            # An optional parameter is absent by default, so the dump leaves it out: say that it exists.
            for name in Space.model_fields:
                if name not in value:
                    lines.append(f"  # {name}: not set ({notes.get(f'space.{name}', 'optional')})")
    return "\n".join(lines) + "\n"


def readme_block() -> str:
    """The README's block between its markers, markers included."""
    return f"{BEGIN}\n```yaml\n{defaults_yaml()}```\n{END}"


def with_block(readme: str) -> str:
    """The README's text with its defaults block replaced by the one the code gives; ValueError without markers."""
    # Found by the start of the opening marker, so a new block can begin as just "<!-- spec-defaults -->".
    start = readme.find(MARKER)
    end = readme.find(END, start)
    if start < 0 or end < 0:
        raise ValueError(f"no spec-defaults block: put the lines {MARKER} --> and {END} where it goes")
    return readme[:start] + readme_block() + readme[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's spec defaults (or, with --check, exit 1 when they are out of date)."""
    parser = argparse.ArgumentParser(prog="python -m tunefleet.spec_defaults", description=__doc__)
    parser.add_argument("readme", nargs="?", default=README, type=Path, help=f"default: {README}")
    parser.add_argument("--check", action="store_true", help="only say whether the block is up to date")
    args = parser.parse_args(argv)
    try:
        text = args.readme.read_text(encoding="utf-8")
        updated = with_block(text)
    except (OSError, ValueError) as error:
        print(f"tunefleet: error: {error}", file=sys.stderr)
        return 2
    if args.check:
        if updated != text:
            print(
                f"{args.readme}: the spec defaults differ from studies/spec.py: run `{FIX_COMMAND}`",
                file=sys.stderr,
            )
            return 1
        return 0
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
        print(f"{args.readme}: spec defaults rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
