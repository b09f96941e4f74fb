"""The asha pruner pauses trials at rungs and promotes them later, from their checkpoints: real runner, real
training on a tiny BERT, real store (SQLite and PostgreSQL); the budget stays exact and nothing is left paused."""

from __future__ import annotations

import math
import threading
from functools import partial
from pathlib import Path

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState

from service.app import create_app
from service.settings import ServiceSettings
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies.artifacts import open_artifact_store
from studies.checkpoints import discard_checkpoint
from studies.fleet import Fleet
from studies.promotion import PAUSED_ATTR, PROMOTED_ATTR
from studies.states import StudyState
from tests.conftest import tiny_spec
from tests.finetune_spec import CPU_WORKER, run_next
from tests.finetune_spec import finetune_spec as spec
from worker.runner import TrialRunner

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 4
N_TRIALS = 5
NO_PATIENCE = {"metric": "val_loss", "direction": "minimize", "value": "best", "patience": 0}
OTHER_WORKER = WorkerIdentity(host="other", pid=2, device="cpu")


def asha_spec(
    name: str, model: Path, data: dict[str, str], *, n_trials: int = N_TRIALS, min_resource: int = 1
) -> StudySpec:
    """Trials of 4 epochs that differ by learning rate, under asha with reduction factor 2: rungs at epochs 1 and
    2, or at 2 alone (min_resource 2)."""
    return spec(
        name,
        model,
        data,
        "head",
        space={"epochs": EPOCHS, "learning_rate": {"type": "float", "low": 1e-4, "high": 0.3, "log": True}},
        objective=NO_PATIENCE,
        pruner={"name": "asha", "min_resource": min_resource, "reduction_factor": 2},
        budget={"n_trials": n_trials},
    )


def runner_for(repository: StudyRepository, tmp_path: Path) -> TrialRunner:
    return TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
    )


def checkpoint_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "artifacts").rglob("checkpoint-*"))


def all_trials(repository: StudyRepository, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=repository.storage).get_trials(deepcopy=False)


def enqueue(repository: StudyRepository, name: str, learning_rates: list[float]) -> None:
    """Queue a trial per learning rate, all with one seed: the same head to start from, so that the larger rates
    (all small enough to learn) are ahead from the first epoch."""
    study = optuna.load_study(study_name=name, storage=repository.storage)
    for learning_rate in learning_rates:
        study.enqueue_trial({"learning_rate": learning_rate}, user_attrs={"seed": 7})


def one_paused(
    repository: StudyRepository, tmp_path: Path, name: str, model: Path, data: dict[str, str]
) -> FrozenTrial:
    """An asha study whose first trial completes and whose second, worse at the first rung, pauses there."""
    repository.create(asha_spec(name, model, data))
    enqueue(repository, name, [0.05, 1e-4])
    assert run_next(runner_for(repository, tmp_path), repository, name)[0] == "complete"
    outcome, paused = run_next(runner_for(repository, tmp_path), repository, name)
    assert outcome == "paused" and paused.state == TrialState.WAITING
    return paused


def uninterrupted(
    repository: StudyRepository,
    tmp_path: Path,
    name: str,
    model: Path,
    data: dict[str, str],
    trial: FrozenTrial,
) -> FrozenTrial:
    """The same trial (parameters and seed) run once from its first epoch to its last, with no pruner."""
    plain = f"{name}-plain-{trial.number}"
    repository.create(spec(plain, model, data, "head", space={"epochs": EPOCHS}, objective=NO_PATIENCE))
    study = optuna.load_study(study_name=plain, storage=repository.storage)
    study.enqueue_trial(trial.params, user_attrs={"seed": trial.user_attrs["seed"]})
    outcome, whole = run_next(runner_for(repository, tmp_path), repository, plain)
    assert outcome == "complete"
    return whole


def test_asha_pauses_at_rungs_promotes_later_and_spends_the_budget_exactly(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
) -> None:
    repository.create(asha_spec(study_name, tiny_model, data_files, min_resource=2))
    # Alone at the rung (epoch 2), the first trial goes on. The second loses to it there and pauses, and so
    # does the third; once four trials have reached the rung, its best half is two, and the second is promoted.
    enqueue(repository, study_name, [0.05, 0.03, 1e-4, 1e-4, 1e-4])
    outcomes: list[str] = []
    # Two workers take turns: a paused trial is nobody's, and whichever worker claims its promotion resumes it.
    for turn in range(50):
        claim = repository.claim(OTHER_WORKER if turn % 2 else CPU_WORKER, study_names=[study_name])
        if claim is None:
            break
        outcomes.append(runner_for(repository, tmp_path).run(claim))
    else:
        pytest.fail(f"the study never ran out of trials to claim: {outcomes}")

    trials = all_trials(repository, study_name)
    assert len(trials) == N_TRIALS, "a promotion is the same trial, not a new one: the budget is exact"
    assert "paused" in outcomes
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert repository.progress(repository.get(study_name)).state == StudyState.COMPLETED
    assert checkpoint_files(tmp_path) == [], "an ended trial, paused or not, leaves no checkpoint"

    promoted = [t for t in trials if PROMOTED_ATTR in t.system_attrs]
    assert [t.number for t in promoted] == [1]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 3
    for trial in trials:
        assert PAUSED_ATTR not in trial.system_attrs
        if trial.state == TrialState.PRUNED:
            # Left paused when the budget ran out: it ends at its rung, valued at its last epoch there.
            paused_at = trial.user_attrs["paused_at_epoch"]
            assert max(trial.intermediate_values) == paused_at
            assert trial.value == trial.intermediate_values[paused_at]
    for trial in promoted:
        # Promoted from a checkpoint at its rung: its epochs are those of the same trial run without a pause.
        assert trial.user_attrs["resumed_from_epoch"] == trial.system_attrs[PROMOTED_ATTR]
        whole = uninterrupted(repository, tmp_path, study_name, tiny_model, data_files, trial)
        steps = sorted(trial.intermediate_values)
        assert trial.intermediate_values == {s: whole.intermediate_values[s] for s in steps}
        if trial.state == TrialState.COMPLETE:
            assert trial.intermediate_values == whole.intermediate_values
            assert trial.user_attrs["val_loss"] == whole.user_attrs["val_loss"]

    # The trials past the rung are the best half of those that reached it.
    reached = {t.number: t.intermediate_values[2] for t in trials}
    went_on = {t.number for t in trials if 3 in t.intermediate_values}
    assert went_on == set(sorted(reached, key=lambda n: (reached[n], n))[: len(reached) // 2])


def test_a_study_stopped_with_paused_trials_ends_them_and_reads_stopped(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
) -> None:
    first = one_paused(repository, tmp_path, study_name, tiny_model, data_files)
    assert first.system_attrs[PAUSED_ATTR] == 1 and first.intermediate_values.keys() == {1}
    assert len(checkpoint_files(tmp_path)) == 1

    repository.set_state(study_name, StudyState.STOPPED, "stopped by user")
    # The reaper's sweep (a worker's or the service's) ends the paused trial and deletes its checkpoint.
    store = open_artifact_store(str(tmp_path / "artifacts"))
    Fleet(repository, partial(discard_checkpoint, store)).reap(grace_s=60)
    assert checkpoint_files(tmp_path) == []
    ended = repository.trial(repository.get(study_name), first.number)
    assert ended.state == TrialState.PRUNED and ended.user_attrs["fail_reason"] == "study stopped"
    assert math.isclose(ended.value or math.nan, first.intermediate_values[1])
    assert repository.progress(repository.get(study_name)).state == StudyState.STOPPED


def test_a_paused_trial_counts_as_paused_leaves_the_queue_its_free_slots_and_goes_with_its_study(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
) -> None:
    one_paused(repository, tmp_path, study_name, tiny_model, data_files)
    counts = repository.progress(repository.get(study_name)).trial_counts
    assert (counts["paused"], counts["waiting"], counts["complete"]) == (1, 0, 1)
    # Two of the five slots are claimed, the paused trial's among them: three are free, not two.
    queued = repository.enqueue(
        study_name, [{"learning_rate": 0.01}, {"learning_rate": 0.02}, {"learning_rate": 0.03}]
    )
    assert queued.slots_left == 0
    counts = repository.progress(repository.get(study_name)).trial_counts
    assert (counts["paused"], counts["waiting"]) == (1, 3)
    assert repository.progress(repository.get(study_name)).state == StudyState.RUNNING

    # Deleted before any reaper's sweep has ended it, the paused trial's checkpoint is deleted with the study.
    assert len(checkpoint_files(tmp_path)) == 1
    repository.set_state(study_name, StudyState.STOPPED, "stopped by user")
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as client:
        assert client.delete(f"/v1/studies/{study_name}").status_code == 204
    assert checkpoint_files(tmp_path) == []


def test_a_promoted_trial_handed_back_resumes_past_its_rungs_without_pausing_again(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
) -> None:
    repository.create(asha_spec(study_name, tiny_model, data_files, n_trials=4))
    # The first trial runs to its end; the second pauses at epoch 1, and is promoted when the fourth arrives.
    enqueue(repository, study_name, [0.01, 0.005, 1e-4, 1e-4])
    outcomes = []
    while (claim := repository.claim(CPU_WORKER, study_names=[study_name])) is not None:
        if PROMOTED_ATTR in repository.storage.get_trial(claim.trial._trial_id).system_attrs:
            # SIGTERM during the promoted run: the trial is handed back, then resumed by another worker.
            stopping = runner_for(repository, tmp_path)
            stopping.stopping.set()
            outcomes.append(stopping.run(claim))
            claim = repository.claim(OTHER_WORKER, study_names=[study_name])
            assert claim is not None
        outcomes.append(runner_for(repository, tmp_path).run(claim))
    assert outcomes == ["complete", "paused", "paused", "paused", "requeued", "paused"]
    trials = all_trials(repository, study_name)
    assert len(trials) == 4
    # Resumed after epoch 1, it reports epoch 1 again, goes past the rung it was promoted from, pauses at the next.
    resumed = trials[1]
    assert resumed.user_attrs["resumed_from_epoch"] == 1 and resumed.user_attrs["paused_at_epoch"] == 2
    assert resumed.intermediate_values.keys() == {1, 2} and resumed.state == TrialState.PRUNED
    assert repository.progress(repository.get(study_name)).state == StudyState.COMPLETED
    assert checkpoint_files(tmp_path) == []


def test_the_retry_of_a_promoted_trial_whose_worker_was_lost_resumes_past_the_rung_it_was_promoted_from(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
) -> None:
    repository.create(asha_spec(study_name, tiny_model, data_files, n_trials=4))
    enqueue(repository, study_name, [0.01, 0.005, 1e-4, 1e-4])
    lost_trial = None
    while (claim := repository.claim(CPU_WORKER, study_names=[study_name])) is not None:
        runner = runner_for(repository, tmp_path)
        if (
            lost_trial is None
            and PROMOTED_ATTR in repository.storage.get_trial(claim.trial._trial_id).system_attrs
        ):
            # The worker that claimed the promotion dies; the reaper fails its trial and queues a copy.
            runner.lost.set()
            assert runner.run(claim) == "abandoned"
            lost_trial = claim.trial.number
            assert repository.retry_lost_trial(claim.trial._trial_id, "worker lost") is not None
            continue
        runner.run(claim)
    trials = all_trials(repository, study_name)
    assert lost_trial == 1
    (copy,) = [t for t in trials if t.user_attrs.get("retry_of") == lost_trial]
    assert copy.system_attrs[PROMOTED_ATTR] == 1
    # From the lost trial's checkpoint at the rung: epoch 1 reported again, not decided again; paused at epoch 2.
    assert copy.user_attrs["resumed_from_epoch"] == 1 and copy.user_attrs["paused_at_epoch"] == 2
    assert copy.intermediate_values.keys() == {1, 2}
    assert repository.progress(repository.get(study_name)).state == StudyState.COMPLETED
    assert checkpoint_files(tmp_path) == []


def test_racing_claims_promote_a_paused_trial_once_and_take_no_budget_for_it(
    store_url: str, study_name: str
) -> None:
    spec = tiny_spec(study_name, budget={"n_trials": 1}, sampler={"name": "random"}, pruner={"name": "asha"})
    first = StudyRepository(open_storage(store_url))
    first.create(StudySpec.model_validate(spec))
    claim = first.claim(CPU_WORKER, study_names=[study_name])
    assert claim is not None and claim.spec.rungs() == [1]
    first.report(claim, 0.5, 1)
    first.pause(claim, 1, {})
    # Alone at its rung it is its best share: promotable, though the study's only budget slot is taken.
    assert first.settle_paused(study_name) == []
    promoted: list[int] = []
    errors: list[BaseException] = []

    def claim_once(n: int) -> None:
        repository = StudyRepository(open_storage(store_url))
        try:
            taken = repository.claim(
                WorkerIdentity(host="race", pid=n, device="cpu"), study_names=[study_name]
            )
            if taken is not None:
                promoted.append(taken.trial.number)
        except BaseException as error:
            errors.append(error)
        finally:
            repository.engine.dispose()

    threads = [threading.Thread(target=claim_once, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and promoted == [claim.trial.number]
    record = first.get(study_name)
    assert record.n_claimed == 1 and first.trial_counts(record)["running"] == 1
    first.engine.dispose()
