"""A study deleted through tunefleet's store while a trial of it is being written to is gone afterwards."""

from __future__ import annotations

import threading

import optuna
import pytest
import sqlalchemy as sa

from studies import open_storage
from studies.storage import SharedStore

# Each round deletes a study under a writer that reports as fast as the store takes it: on PostgreSQL, Optuna's own
# delete_study left the study in place at the first round (it ignores the integrity error of a row written meanwhile).
ROUNDS = 6


def report_until_gone(
    writer: optuna.storages.BaseStorage, trial_id: int, reported: threading.Event, stop: threading.Event
) -> None:
    step = 0
    while not stop.is_set():
        try:
            writer.set_trial_intermediate_value(trial_id, step, 1.0 / (step + 1))
        except (KeyError, optuna.exceptions.StorageInternalError, sa.exc.IntegrityError):
            return  # the trial went with its study
        step += 1
        if step == 3:
            reported.set()


def test_a_study_deleted_while_its_running_trial_reports_is_gone(store_url: str, study_name: str) -> None:
    storage = open_storage(store_url)
    writer = open_storage(store_url)  # another connection pool, as a worker process has
    assert isinstance(storage, SharedStore)
    try:
        for round_ in range(ROUNDS):
            name = f"{study_name}-{round_}"
            optuna.create_study(study_name=name, storage=storage)
            study_id = storage.get_study_id_from_name(name)
            trial_id = storage.create_new_trial(study_id)
            reported = threading.Event()
            stop = threading.Event()
            thread = threading.Thread(target=report_until_gone, args=(writer, trial_id, reported, stop))
            thread.start()
            try:
                assert reported.wait(timeout=30), "the writer never reported"
                storage.delete_study(study_id)
            finally:
                stop.set()
                thread.join(timeout=30)
            assert name not in optuna.get_all_study_names(storage), (
                f"round {round_}: the study is still there"
            )
            with pytest.raises(KeyError):
                storage.get_study_name_from_id(study_id)
    finally:
        storage.engine.dispose()
        writer.engine.dispose()


def test_deleting_a_study_that_is_not_there_is_a_key_error(store_url: str) -> None:
    storage = open_storage(store_url)
    try:
        with pytest.raises(KeyError):
            storage.delete_study(2**31 - 1)
    finally:
        storage.engine.dispose()
