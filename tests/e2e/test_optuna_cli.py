"""Plain Optuna (its `optuna` CLI and `optuna.load_study`) works on tunefleet's store unchanged, on both backends."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec
from tests.conftest import tiny_spec

OPTUNA = Path(sys.executable).parent / "optuna"


def as_documented(url: str) -> str:
    """The URL as a user copies it from TUNEFLEET_DATABASE_URL: plain postgresql://, no driver named."""
    return url.replace("postgresql+psycopg://", "postgresql://")


def optuna_cli(*args: str) -> Any:
    result = subprocess.run(
        [str(OPTUNA), *args, "--format", "json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_optuna_cli_lists_a_tunefleet_study_and_its_best_trial(
    repository: StudyRepository, store_url: str, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    study.add_trial(
        optuna.create_trial(
            params={"learning_rate": 0.01},
            distributions={"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)},
            value=0.42,
        )
    )

    url = as_documented(store_url)
    listed = {s["name"]: s for s in optuna_cli("studies", "--storage", url)}
    assert study_name in listed
    assert listed[study_name]["direction"] == ["MINIMIZE"]
    assert listed[study_name]["n_trials"] == 1

    best = optuna_cli("best-trial", "--study-name", study_name, "--storage", url)
    assert best["value"] == 0.42
    assert best["params"] == {"learning_rate": 0.01}


def test_optuna_load_study_reads_and_writes_a_study_created_by_tunefleet(
    repository: StudyRepository, store_url: str, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))

    study = optuna.load_study(study_name=study_name, storage=as_documented(store_url))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trial = study.ask({"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)})
    trial.report(0.9, step=0)
    trial.report(0.7, step=1)
    study.tell(trial, 0.7)
    pruned = study.ask()
    pruned.report(2.0, step=0)
    study.tell(pruned, state=TrialState.PRUNED)

    # A second, independent connection sees what the first one wrote.
    reread = optuna.load_study(study_name=study_name, storage=as_documented(store_url))
    states = [t.state for t in reread.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]
    assert reread.best_trial.intermediate_values == {0: 0.9, 1: 0.7}
    assert reread.best_value == 0.7
