"""A claimed trial's rows, written directly, read back through Optuna exactly as Optuna's own writes read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from bench.common import delete_studies, seed_trials
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies._optuna.trial_rows import take_queued_trial
from studies.errors import TrialVanished, WorkerDeclaredLost
from studies.fleet import Fleet
from studies.lifecycle import COPIED_WHILE_RUNNING
from studies.space import distributions
from studies.tables import utcnow
from tests.conftest import tiny_spec

WORKER = WorkerIdentity(host="rows", pid=7, device="cpu")


def test_a_claimed_trial_reads_back_like_one_optuna_made(
    repository: StudyRepository, study_name: str
) -> None:
    spec = StudySpec.model_validate(tiny_spec(study_name, sampler={"name": "random"}))
    record = repository.create(spec)
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    claim.trial.report(0.5, 1)
    claim.trial.report(0.25, 2)
    repository.complete(claim, 0.25, {"val_accuracy": 0.9})

    # The same trial made through Optuna's public API, for comparison.
    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    # The parameters this claim drew: width and activation are drawn only for a hidden layer (depth >= 1).
    drawn = {name: d for name, d in distributions(spec.space).items() if name in claim.params}
    reference = study.ask(fixed_distributions=drawn)
    reference.report(0.5, 1)
    reference.report(0.25, 2)
    reference.set_user_attr("val_accuracy", 0.9)
    study.tell(reference, 0.25)

    ours = repository.storage.get_trial(claim.trial._trial_id)
    theirs = repository.storage.get_trial(reference._trial_id)
    assert ours.number == 0 and theirs.number == 1
    assert ours.state == theirs.state == TrialState.COMPLETE
    assert ours.value == theirs.value == 0.25
    assert ours.intermediate_values == theirs.intermediate_values == {1: 0.5, 2: 0.25}
    assert ours.distributions == theirs.distributions
    assert ours.params == claim.params
    assert set(ours.user_attrs) == {"seed", "worker", "worker_id", "device", "val_accuracy"}
    assert ours.user_attrs["worker"] == WORKER.label
    assert ours.datetime_start is not None and ours.datetime_complete is not None
    assert ours.datetime_start <= ours.datetime_complete
    # Optuna hands out naive local time for both; ours must sit beside its own, not hours away.
    assert abs((theirs.datetime_start - ours.datetime_start).total_seconds()) < 60
    assert repository.progress(record).best_trial is not None


def test_a_pruned_trial_keeps_its_last_reported_value(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    claim.trial.report(0.7, 1)
    claim.trial.report(0.6, 2)
    repository.prune(claim, {})
    trial = repository.storage.get_trial(claim.trial._trial_id)
    assert trial.state == TrialState.PRUNED
    assert trial.value == 0.6  # as Study.tell records a pruned trial


def test_a_nan_value_fails_the_trial_with_the_reason(repository: StudyRepository, study_name: str) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    repository.complete(claim, float("nan"), {})
    trial = repository.storage.get_trial(claim.trial._trial_id)
    assert trial.state == TrialState.FAIL
    assert trial.value is None
    assert trial.user_attrs["fail_reason"] == "the objective value is not a number"


def test_claims_and_optuna_enqueues_share_one_numbering(repository: StudyRepository, study_name: str) -> None:
    spec = StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 6}))
    repository.create(spec)
    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    numbers = []
    for index in range(6):
        if index % 2:
            # Someone enqueues a point through Optuna (the dashboard, a notebook) between claims.
            study.enqueue_trial({"learning_rate": 0.01})
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        numbers.append(claim.trial.number)
        if index % 2:
            assert claim.params["learning_rate"] == 0.01  # the queued trial comes first, with its point
        repository.complete(claim, 1.0, {})
    assert sorted(numbers) == numbers
    assert len(set(numbers)) == 6
    all_numbers = [
        t.number for t in repository.storage.get_all_trials(repository.get(study_name).optuna_study_id)
    ]
    assert sorted(all_numbers) == list(range(len(all_numbers)))


def test_a_claim_holds_its_trial_in_the_registry_and_its_end_releases_it(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=8, device="cpu", worker_id=f"{study_name}-w")
    fleet.register(worker)
    claim = repository.claim(worker, study_names=[study_name])
    assert claim is not None
    row = next(w for w in fleet.workers() if w.worker_id == worker.worker_id)
    assert (row.state, row.study_name, row.trial_number) == ("busy", study_name, claim.trial.number)
    repository.complete(claim, 1.0, {})
    row = next(w for w in fleet.workers() if w.worker_id == worker.worker_id)
    assert (row.state, row.study_name, row.trial_number) == ("idle", None, None)


def test_a_worker_declared_lost_claims_nothing(repository: StudyRepository, study_name: str) -> None:
    record = repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=9, device="cpu", worker_id=f"{study_name}-lost")
    fleet.register(worker, grace_s=0.01)
    time.sleep(0.05)
    assert worker.worker_id in fleet.reap(grace_s=0.01)
    with pytest.raises(WorkerDeclaredLost):
        repository.claim(worker, study_names=[study_name])
    # Rolled back whole: no budget slot spent, no trial made.
    assert repository.get(study_name).n_claimed == 0
    assert sum(repository.trial_counts(record).values()) == 0


def test_a_sampler_that_cannot_sample_fails_its_trial_with_the_reason(
    repository: StudyRepository, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import studies.claim

    record = repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=10, device="cpu", worker_id=f"{study_name}-w")
    fleet.register(worker)

    def broken(*args: object) -> None:
        raise ValueError("the sampler's model is singular")

    monkeypatch.setattr(studies.claim, "sample_params", broken)
    with pytest.raises(ValueError, match="singular"):
        repository.claim(worker, study_names=[study_name])
    [trial] = repository.storage.get_all_trials(record.optuna_study_id)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "sampling failed: ValueError: the sampler's model is singular"
    row = next(w for w in fleet.workers() if w.worker_id == worker.worker_id)
    assert (row.state, row.trial_number) == ("idle", None)  # the worker holds nothing


def test_reports_written_by_the_repository_read_back_like_optunas(
    repository: StudyRepository, study_name: str
) -> None:
    repository.create(StudySpec.model_validate(tiny_spec(study_name, sampler={"name": "random"})))
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    for step, value in ((1, 0.5), (2, float("inf")), (3, float("-inf")), (4, float("nan"))):
        repository.report(claim, value, step)
    repository.report(claim, 9.0, 1)  # as Optuna: a step is reported once
    reported = repository.storage.get_trial(claim.trial._trial_id).intermediate_values
    assert {step: value for step, value in reported.items() if step != 4} == {
        1: 0.5,
        2: float("inf"),
        3: float("-inf"),
    }
    assert reported[4] != reported[4]  # NaN
    assert claim.trial.should_prune()  # the pruner sees the trial's reports: a NaN last is pruned


def test_a_trial_whose_study_was_deleted_outside_tunefleet_vanishes_on_every_path(
    repository: StudyRepository, study_name: str
) -> None:
    # optuna-dashboard, `optuna delete-study` and the dashboard's rename delete the Optuna study and its
    # trials: whatever the worker does next with its trial must say so, not raise a KeyError.
    repository.create(StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 5})))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=11, device="cpu", worker_id=f"{study_name}-w")
    fleet.register(worker)
    claim = repository.claim(worker, study_names=[study_name])
    assert claim is not None
    repository.report(claim, 0.5, 1)
    optuna.delete_study(study_name=study_name, storage=repository.storage)
    assert not repository.still_claimed(claim)
    ends = {
        "report": lambda: repository.report(claim, 0.4, 2),
        "complete": lambda: repository.complete(claim, 0.4, {}),
        "prune": lambda: repository.prune(claim, {}),
        "fail": lambda: repository.fail(claim, "boom"),
        "give back": lambda: repository.give_back(claim),
    }
    for what, end in ends.items():
        with pytest.raises(TrialVanished, match=f"trial 0 of {study_name} is gone"):
            end()
        assert what


def test_a_study_deleted_while_its_trial_is_being_claimed_is_passed_over(
    repository: StudyRepository, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import studies.claim

    repository.create(StudySpec.model_validate(tiny_spec(study_name, priority=10)))
    repository.create(StudySpec.model_validate(tiny_spec(f"{study_name}-next")))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=15, device="cpu", worker_id=f"{study_name}-w")
    fleet.register(worker)
    sample = studies.claim.sample_params

    def deleted_meanwhile(study: optuna.Study, *args: Any) -> None:
        if study.study_name == study_name:
            optuna.delete_study(study_name=study_name, storage=repository.storage)
        sample(study, *args)

    monkeypatch.setattr(studies.claim, "sample_params", deleted_meanwhile)
    claim = repository.claim(worker, study_names=[study_name, f"{study_name}-next"])
    assert claim is not None and claim.study_name == f"{study_name}-next"
    row = next(w for w in fleet.workers() if w.worker_id == worker.worker_id)
    assert (row.study_name, row.trial_number) == (f"{study_name}-next", claim.trial.number)
    repository.complete(claim, 0.5, {})


def test_a_trial_that_now_has_a_vanished_trials_id_is_left_alone(
    repository: StudyRepository, store_url: str, study_name: str
) -> None:
    # SQLite gives a deleted study's id and its newest trial's id to the next ones made: the first
    # worker's late report and end must not land in the second worker's trial.
    first, second = (
        WorkerIdentity(host="rows", pid=12 + i, device="cpu", worker_id=f"{study_name}-w{i}")
        for i in range(2)
    )
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    gone = repository.claim(first, study_names=[study_name])
    assert gone is not None
    optuna.delete_study(study_name=study_name, storage=repository.storage)
    repository.create(StudySpec.model_validate(tiny_spec(f"{study_name}-next")))
    now = repository.claim(second, study_names=[f"{study_name}-next"])
    assert now is not None
    if store_url.startswith("sqlite"):
        assert now.trial._trial_id == gone.trial._trial_id
    for late in (lambda: repository.report(gone, 0.1, 1), lambda: repository.complete(gone, 0.1, {})):
        with pytest.raises(TrialVanished):
            late()
    trial = repository.storage.get_trial(now.trial._trial_id)
    assert (trial.state, trial.intermediate_values) == (TrialState.RUNNING, {})
    repository.complete(now, 0.2, {})
    assert repository.storage.get_trial(now.trial._trial_id).value == 0.2


def test_the_reaper_fails_a_running_trial_a_copy_took_along_and_leaves_plain_optuna_trials_alone(
    tmp_path: Path, study_name: str
) -> None:
    # optuna-dashboard's rename copies a study's trials, a running one included, then deletes the study:
    # no worker runs the copy. On SQLite only: a sweep a grace period apart would also reap what other
    # tests running at the same time leave unheld in the shared PostgreSQL database.
    repository = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    fleet = Fleet(repository)
    worker = WorkerIdentity(host="rows", pid=14, device="cpu", worker_id=f"{study_name}-w")
    fleet.register(worker)
    repository.create(StudySpec.model_validate(tiny_spec(study_name)))
    claim = repository.claim(worker, study_names=[study_name])
    assert claim is not None
    optuna.copy_study(
        from_study_name=study_name,
        from_storage=repository.storage,
        to_storage=repository.storage,
        to_study_name=f"{study_name}-copy",
    )
    plain = optuna.create_study(study_name=f"{study_name}-plain", storage=repository.storage)
    untagged = plain.ask()
    for _ in range(3):
        assert fleet.heartbeat(worker.worker_id)  # the original's worker is alive and runs it
        fleet.reap(grace_s=0.2)
        time.sleep(0.15)
    [copied] = optuna.load_study(study_name=f"{study_name}-copy", storage=repository.storage).trials
    assert copied.state == TrialState.FAIL
    assert copied.user_attrs["fail_reason"] == COPIED_WHILE_RUNNING
    assert repository.storage.get_trial(untagged._trial_id).state == TrialState.RUNNING
    assert repository.storage.get_trial(claim.trial._trial_id).state == TrialState.RUNNING
    repository.engine.dispose()


def test_the_queue_lookup_reads_the_study_not_the_whole_store(postgres_url: str, study_name: str) -> None:
    # ORDER BY the primary key with LIMIT 1 let PostgreSQL walk every trial of every study in id
    # order looking for this study's WAITING one (none, most of the time), at every claim and while
    # holding the budget's row lock: 5 ms a claim on a store of 180,000 trials.
    repository = StudyRepository(open_storage(postgres_url))
    spec = StudySpec.model_validate(tiny_spec(study_name))
    record = repository.create(spec)
    # A study big enough for the planner to expect its WAITING trials all along the primary key.
    seed_trials(repository.engine, record.optuna_study_id, distributions(spec.space), 3000, seed=0)
    statements: list[tuple[str, Any]] = []

    def record_statement(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        statements.append((statement, parameters))

    try:
        with repository.engine.begin() as connection:
            sa.event.listen(connection, "before_cursor_execute", record_statement)
            assert take_queued_trial(connection, record.optuna_study_id, utcnow()) is None
            sa.event.remove(connection, "before_cursor_execute", record_statement)
            (lookup, parameters), *_ = statements
            plan = json.dumps(
                connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + lookup, parameters).scalar()
            )
        assert "trials_pkey" not in plan, plan
        assert "ix_trials_study_id" in plan or "Seq Scan" in plan, plan
    finally:
        repository.engine.dispose()
        delete_studies(postgres_url, [study_name])
