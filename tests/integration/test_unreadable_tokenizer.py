"""A model folder without its tokenizer files fails its trials with a reason that says so, then its study."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from tests.conftest import tiny_spec
from tests.unit.test_tokenizer_check import copy_without_tokenizer
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")


@pytest.mark.parametrize("finetune", ["head", "last-k"])
def test_a_folder_without_tokenizer_files_fails_every_trial_and_then_the_study(
    repository: StudyRepository, study_name: str, tmp_path: Path, finetune: str
) -> None:
    folder = copy_without_tokenizer(tmp_path / "my-encoder")
    task = {"model": str(folder), "max_examples": 40, "max_length": 32, "finetune": finetune}
    if finetune == "last-k":
        task["k"] = 1
    repository.create(StudySpec.model_validate(tiny_spec(study_name, task=task, budget={"n_trials": 5})))
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    outcomes = []
    while (claim := repository.claim(WORKER, study_names=[study_name])) is not None:
        outcomes.append(runner.run(claim))
    # The breaker (three alike) fails the study; nothing trained at chance level on unknown tokens.
    assert outcomes == ["fail"] * 3
    record = repository.get(study_name)
    reason = (
        f"the tokenizer in {folder.resolve()} has a vocabulary of 5 tokens: is the folder missing tokenizer.json /"
        " vocab.txt?"
    )
    trials = repository.storage.get_all_trials(record.optuna_study_id)
    assert all(t.state == TrialState.FAIL and t.user_attrs["fail_reason"].startswith(reason) for t in trials)
    assert record.state == "failed"
    assert (record.state_reason or "").startswith(f"the first 3 trials failed: {reason}")
    assert not list((tmp_path / "cache").glob("features-*.pt"))
