"""The claim of a trial: atomic within the budget however many claimers race, on both backends."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from studies import StudyNotFound, StudyRepository, StudySpec, WorkerIdentity
from tests.conftest import tiny_spec


def worker(n: int) -> WorkerIdentity:
    return WorkerIdentity(host="test", pid=n, device="cpu")


def test_claims_stop_at_the_budget(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claims = [repository.claim(worker(1), study_names=[study_name]) for _ in range(5)]
    assert [c is not None for c in claims] == [True, True, True, False, False]
    assert sorted(c.claim_index for c in claims if c) == [0, 1, 2]


def test_racing_claimers_never_overshoot_the_budget(store_url: str, study_name: str) -> None:
    from studies import open_storage

    StudyRepository(open_storage(store_url)).create(
        StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 12}, sampler={"name": "random"}))
    )
    numbers: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def claim_until_empty(n: int) -> None:
        # One repository per thread, as one per worker process: separate pools, real contention.
        repo = StudyRepository(open_storage(store_url))
        try:
            while (claim := repo.claim(worker(n), study_names=[study_name])) is not None:
                repo.complete(claim, 1.0, {})
                with lock:
                    numbers.append(claim.trial.number)
        except BaseException as error:
            errors.append(error)
        finally:
            repo.engine.dispose()

    threads = [threading.Thread(target=claim_until_empty, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(numbers) == list(range(12))


def test_two_racing_claims_get_different_parameters(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    first = repository.claim(worker(1), study_names=[study_name])
    second = repository.claim(worker(2), study_names=[study_name])
    assert first is not None and second is not None
    assert first.params != second.params
    assert first.seed != second.seed


def test_a_trial_given_back_is_rerun_as_the_same_trial_with_its_parameters_and_seed(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 1})))
    claim = repository.claim(worker(1), study_names=[study_name])
    assert claim is not None
    claim.trial.report(0.9, 1)
    repository.give_back(claim)
    record = repository.get(study_name)
    waiting = repository.trial(record, claim.trial.number)
    assert waiting.state == TrialState.WAITING
    assert waiting.intermediate_values == {}

    rerun = repository.claim(worker(2), study_names=[study_name])
    assert rerun is not None
    assert rerun.trial.number == claim.trial.number
    assert rerun.params == claim.params
    assert rerun.seed == claim.seed
    assert repository.claim(worker(3), study_names=[study_name]) is None
    rerun.trial.report(0.7, 1)
    repository.complete(rerun, 0.5, {})
    assert repository.trial_counts(record)["complete"] == 1
    assert sum(repository.trial_counts(record).values()) == 1
    assert repository.progress(repository.get(study_name)).state == "completed"


def test_a_lost_workers_trial_fails_and_is_retried_within_max_retries(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(
        StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 1, "max_retries": 1}))
    )
    first = repository.claim(worker(1), study_names=[study_name])
    assert first is not None
    assert repository.retry_lost_trial(first.trial._trial_id, "worker lost") is not None
    record = repository.get(study_name)
    lost = repository.trial(record, first.trial.number)
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["fail_reason"] == "worker lost"

    retry = repository.claim(worker(2), study_names=[study_name])
    assert retry is not None
    assert retry.params == first.params and retry.seed == first.seed
    assert retry.trial.user_attrs["retry_of"] == first.trial.number
    # The retry's worker dies too: max_retries is spent, so no third run is queued.
    repository.retry_lost_trial(retry.trial._trial_id, "worker lost")
    assert repository.claim(worker(3), study_names=[study_name]) is None
    assert repository.trial_counts(record)["fail"] == 2


def test_a_late_result_never_overwrites_a_lost_trial(repository: StudyRepository, study_name: str) -> None:
    import optuna

    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claim = repository.claim(worker(1), study_names=[study_name])
    assert claim is not None
    repository.retry_lost_trial(claim.trial._trial_id, "worker lost")
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        claim.trial.report(0.1, 1)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        repository.complete(claim, 0.1, {})
    trial = repository.trial(repository.get(study_name), claim.trial.number)
    assert trial.state == TrialState.FAIL
    assert trial.value is None


def test_a_grid_hands_out_every_point_once_and_then_stops(
    repository: StudyRepository, study_name: str
) -> None:
    space = {
        "learning_rate": {"type": "categorical", "choices": [0.01, 0.1]},
        "batch_size": 16,
        "epochs": {"type": "int", "low": 1, "high": 3},
        "depth": 0,
        "width": 8,
        "activation": "relu",
        "optimizer": "adam",
    }
    spec = tiny_spec(study_name, sampler={"name": "grid", "seed": 1}, space=space, budget={"n_trials": 50})
    repository.create(StudySpec.model_validate(spec))
    seen = []
    while (claim := repository.claim(worker(1), study_names=[study_name])) is not None:
        seen.append((claim.params["learning_rate"], claim.params["epochs"]))
    assert sorted(seen) == sorted((lr, e) for lr in (0.01, 0.1) for e in (1, 2, 3))


def test_the_breaker_fails_a_study_whose_first_trials_all_fail_alike(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 10})))
    for _ in range(3):
        claim = repository.claim(worker(1), study_names=[study_name])
        assert claim is not None
        repository.fail(claim, "data file /data/train.csv does not exist on this worker")
    record = repository.get(study_name)
    assert record.state == "failed"
    assert record.state_reason is not None and "train.csv" in record.state_reason
    assert repository.claim(worker(1), study_names=[study_name]) is None


def test_the_breaker_leaves_a_study_with_a_success_alone(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 10})))
    claim = repository.claim(worker(1), study_names=[study_name])
    assert claim is not None
    repository.complete(claim, 1.0, {})
    for _ in range(3):
        claim = repository.claim(worker(1), study_names=[study_name])
        assert claim is not None
        repository.fail(claim, "NaN loss at epoch 1")
    assert repository.get(study_name).state == "running"


def test_claim_prefers_the_higher_priority_study(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name + "-low", priority=-5)))
    repository.create(StudySpec.model_validate(tiny_spec(study_name + "-high", priority=900)))
    claim = repository.claim(worker(1))
    assert claim is not None
    assert claim.study_name == study_name + "-high"
    repository.complete(claim, 1.0, {})


def test_a_study_deleted_through_the_dashboard_is_gone_and_its_name_free(
    repository: StudyRepository, study_name: str
) -> None:
    # optuna-dashboard and `optuna delete-study` delete the Optuna study only; tunefleet's row stayed
    # behind: listed, claimable by workers, and blocking the name for good.
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    optuna.delete_study(study_name=study_name, storage=repository.storage)
    with pytest.raises(StudyNotFound):
        repository.get(study_name)
    assert study_name not in {r.name for r in repository.list_studies()}
    assert repository.claim(worker(1), study_names=[study_name]) is None
    again = repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 2})))
    assert again.n_trials == 2
    claim = repository.claim(worker(1), study_names=[study_name])
    assert claim is not None and claim.trial.number == 0
