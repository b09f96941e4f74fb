"""The claim of a trial: atomic within the budget however many claimers race, on both backends."""

from __future__ import annotations

import threading

from optuna.trial import TrialState

from studies import StudyRepository, StudySpec, WorkerIdentity
from tests.conftest import tiny_spec


def worker(n: int) -> WorkerIdentity:
    return WorkerIdentity(host="test", pid=n, device="cpu")


def test_claims_stop_at_the_budget(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claims = [repository.claim(worker(1), study_name=study_name) for _ in range(5)]
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
            while (claim := repo.claim(worker(n), study_name=study_name)) is not None:
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
    first = repository.claim(worker(1), study_name=study_name)
    second = repository.claim(worker(2), study_name=study_name)
    assert first is not None and second is not None
    assert first.params != second.params
    assert first.seed != second.seed


def test_a_trial_given_back_is_rerun_with_the_same_parameters_and_seed(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 1})))
    claim = repository.claim(worker(1), study_name=study_name)
    assert claim is not None
    repository.give_back(claim, "worker stopped before the trial ended")
    rerun = repository.claim(worker(2), study_name=study_name)
    assert rerun is not None
    assert rerun.params == claim.params
    assert rerun.seed == claim.seed
    assert rerun.trial.number != claim.trial.number
    assert repository.claim(worker(3), study_name=study_name) is None
    repository.complete(rerun, 0.5, {})
    record = repository.get(study_name)
    given_back = repository.trial(record, claim.trial.number)
    assert given_back.state == TrialState.FAIL
    assert given_back.user_attrs["fail_reason"] == "worker stopped before the trial ended"
    assert repository.progress(record).state == "completed"


def test_claim_prefers_the_higher_priority_study(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name + "-low", priority=-5)))
    repository.create(StudySpec.model_validate(tiny_spec(study_name + "-high", priority=900)))
    claim = repository.claim(worker(1))
    assert claim is not None
    assert claim.study_name == study_name + "-high"
    repository.complete(claim, 1.0, {})
