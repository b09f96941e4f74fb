"""The claim transaction: a runnable study's budget slot, a trial, its worker's hold on it, and its sample."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from functools import partial
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from studies import promotion
from studies._optuna import trial_rows
from studies._optuna.trial_reads import BulkReadRDBStorage
from studies._optuna.trial_rows import NewTrial
from studies.errors import TrialVanished, WorkerDeclaredLost
from studies.lifecycle import Held, TrialLifecycle, lock_held
from studies.records import Claim, ClaimedTrial, StudyRecord, WorkerIdentity, record_from_row
from studies.resilience import GaveUp, is_transient, with_retry
from studies.sampling import (
    build_pruner,
    build_sampler,
    derived_seed,
    pruner_reads_its_resources,
    sample_params,
)
from studies.space import conditions, distributions
from studies.spec import AshaPruner, StudySpec
from studies.states import WORKER_ALIVE, StudyState, WorkerState
from studies.tables import studies_table, utcnow, workers_table
from studies.warm_start import stored_prior

log = logging.getLogger("tunefleet.claim")

# Claims in a row whose study was deleted under them (outside tunefleet) before one is given up as none.
CLAIM_ATTEMPTS = 5


class ClaimTransaction(TrialLifecycle):
    """Claims the next trial of a runnable study within its budget, atomically, however many workers race."""

    def __init__(self, storage: RDBStorage) -> None:
        super().__init__(storage)
        # Parsed specs, samplers and pruners per (study name, Optuna study id), for the life of the process.
        self._specs: dict[tuple[str, int], StudySpec] = {}
        self._samplers: dict[tuple[str, int], optuna.samplers.BaseSampler] = {}
        self._pruners: dict[tuple[str, int], optuna.pruners.BasePruner] = {}

    def _runnable(
        self,
        connection: sa.Connection,
        study_names: Sequence[str] | None,
        can_run: Callable[[StudySpec], bool] | None = None,
    ) -> list[tuple[str, int]]:
        c = studies_table.c
        # A study whose trials are all claimed still runs its paused trials when a rung promotes them.
        paused = promotion.has_paused_trials(c.optuna_study_id, correlate=studies_table)
        query = sa.select(c.study_name, c.optuna_study_id).where(
            c.state == StudyState.RUNNING,
            sa.or_(c.n_claimed < c.n_trials, paused),
            sa.or_(c.deadline_at.is_(None), c.deadline_at > utcnow()),
            self._alive(),
        )
        if study_names is not None:
            query = query.where(c.study_name.in_(list(study_names)))
        rows = connection.execute(query.order_by(c.priority.desc(), c.n_claimed, c.created_at)).all()
        listed = [(row.study_name, row.optuna_study_id) for row in rows]
        # A spec is kept while its study is listed, whether or not this worker may run it (it is asked each time).
        for key in set(list(self._specs)) - set(listed):
            self._specs.pop(key, None)
        return [key for key in listed if can_run is None or can_run(self._spec_of(connection, *key))]

    def _forget_all_but(self, runnable: Sequence[tuple[str, int]]) -> None:
        # What this worker keeps per study (its sampler, pruner, loaded study and the store's paused trials) only
        # for the studies it may still claim from: one that ended, was deleted or spent its budget is not
        # claimed from again, and a fleet that lives through thousands of studies would otherwise hold them all.
        # A study that becomes runnable again (a trial retried, a paused one promoted) builds them anew.
        # list(dict) copies the keys at once, as another thread of the process may claim meanwhile.
        live = set(runnable)
        for kept in (self._samplers, self._pruners):
            for key in set(list(kept)) - live:
                kept.pop(key, None)
        for name in set(list(self._studies)) - {name for name, _ in live}:
            self._studies.pop(name, None)
        if isinstance(self.storage, BulkReadRDBStorage):
            self.storage.forget_paused_all_but({study_id for _, study_id in live})

    def _take_promoted(
        self, connection: sa.Connection, study_name: str, optuna_study_id: int
    ) -> tuple[StudyRecord, NewTrial] | None:
        # A promotion takes no budget slot: the paused trial kept the one its first claim took.
        spec = self._spec_of(connection, study_name, optuna_study_id)
        pruner = spec.pruner
        if not isinstance(pruner, AshaPruner):
            return None
        minimize = spec.objective.epoch_direction == "minimize"
        for paused in promotion.promotable(
            connection, optuna_study_id, pruner.reduction_factor, minimize=minimize
        ):
            if promotion.take_paused(connection, paused):
                row = connection.execute(
                    sa.select(studies_table).where(studies_table.c.study_name == study_name)
                ).one()
                started = connection.execute(
                    sa.select(trial_rows.trials.c.datetime_start).where(
                        trial_rows.trials.c.trial_id == paused.trial_id
                    )
                ).scalar_one()
                return self._cached_record(row), NewTrial(
                    paused.trial_id, paused.number, started or utcnow(), from_queue=True
                )
        return None

    def _spec_of(self, connection: sa.Connection, study_name: str, optuna_study_id: int) -> StudySpec:
        # Read once per study and process: a spec never changes once stored.
        key = (study_name, optuna_study_id)
        if key not in self._specs:
            stored = connection.execute(
                sa.select(studies_table.c.spec).where(studies_table.c.study_name == study_name)
            ).scalar_one()
            self._specs[key] = StudySpec.model_validate(stored)
        return self._specs[key]

    def _take_slot(self, connection: sa.Connection, study_name: str) -> Any:
        c = studies_table.c
        # One conditional UPDATE is the budget: PostgreSQL row-locks and re-checks the WHERE clause
        # for racing updates, SQLite serialises writers, so the budget can never overshoot.
        return connection.execute(
            studies_table.update()
            .where(c.study_name == study_name, c.state == StudyState.RUNNING, c.n_claimed < c.n_trials)
            .values(n_claimed=c.n_claimed + 1, updated_at=utcnow())
            .returning(*studies_table.c)
        ).first()

    def _cached_record(self, row: Any) -> StudyRecord:
        # A spec never changes once stored: parse it once per study, not once per claim.
        key = (row.study_name, row.optuna_study_id)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = StudySpec.model_validate(row.spec)
        return record_from_row(row, spec)

    def _take_trial(
        self,
        worker: WorkerIdentity,
        study_names: Sequence[str] | None,
        can_run: Callable[[StudySpec], bool] | None = None,
    ) -> tuple[StudyRecord, NewTrial, dict[str, Any]] | None:
        # The whole claim in one transaction: a budget slot, a RUNNING trial (queued first), its
        # tags, and the worker's registry row pointing at it. Nothing half-made survives a crash or
        # a dropped connection; a retry after a commit whose answer was lost leaves the first trial
        # held by no registry row, which the reaper's sweep for unheld trials retries.
        with self._begin() as connection:
            runnable = self._runnable(connection, study_names, can_run)
            self._forget_all_but(runnable)
            for name, optuna_study_id in runnable:
                promoted = self._take_promoted(connection, name, optuna_study_id)
                if promoted is not None:
                    record, new = promoted
                else:
                    row = self._take_slot(connection, name)
                    if row is None:
                        continue
                    record = self._cached_record(row)
                    now = utcnow()
                    new = trial_rows.take_queued_trial(
                        connection, record.optuna_study_id, now, skip=promotion.is_paused()
                    ) or trial_rows.insert_running_trial(connection, record.optuna_study_id, now)
                # A trial handed back or retried keeps its seed, so its rerun is the same experiment.
                stored_seed = (
                    trial_rows.user_attr(connection, new.trial_id, "seed") if new.from_queue else None
                )
                seed = (
                    int(stored_seed)
                    if stored_seed is not None
                    else derived_seed(record.spec.sampler.seed or 0, "trial", new.number)
                )
                tags = {
                    "seed": seed,
                    "worker": worker.label,
                    "worker_id": worker.worker_id,
                    "device": worker.device,
                }
                trial_rows.set_user_attrs(connection, new.trial_id, tags)
                # A worker id never registered (a script claiming outside the fleet) only tags the
                # trial: no row holds it, so a reaper retries it once it has been unheld for a grace period.
                if (
                    worker.worker_id
                    and not self._hold(connection, worker.worker_id, name, new)
                    and self._registered(connection, worker.worker_id)
                ):
                    raise WorkerDeclaredLost(worker.worker_id)
                return record, new, tags
        return None

    @staticmethod
    def _hold(connection: sa.Connection, worker_id: str, study_name: str, new: NewTrial) -> bool:
        c = workers_table.c
        return bool(
            connection.execute(
                workers_table.update()
                .where(c.worker_id == worker_id, c.state.in_(WORKER_ALIVE))
                .values(
                    state=WorkerState.BUSY,
                    study_name=study_name,
                    trial_id=new.trial_id,
                    trial_number=new.number,
                    heartbeat_at=utcnow(),
                )
            ).rowcount
        )

    @staticmethod
    def _registered(connection: sa.Connection, worker_id: str) -> bool:
        c = workers_table.c
        return connection.execute(sa.select(c.worker_id).where(c.worker_id == worker_id)).first() is not None

    def _frozen(self, new: NewTrial, tags: dict[str, Any]) -> FrozenTrial:
        if new.from_queue:
            # Queued trials carry parameters, fixed parameters and attributes: read them whole.
            return self.storage.get_trial(new.trial_id)
        return FrozenTrial(
            number=new.number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            # Optuna stores naive UTC and hands out naive local time.
            datetime_start=new.datetime_start.replace(tzinfo=UTC).astimezone().replace(tzinfo=None),
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs=dict(tags),
            system_attrs={},
            intermediate_values={},
            trial_id=new.trial_id,
        )

    def _sampler(self, record: StudyRecord, claim_index: int) -> optuna.samplers.BaseSampler:
        # One sampler per study for the life of the process, seeded at its first claim: Optuna's
        # samplers keep incremental caches between trials (TPE's search space: 60 ms a trial at
        # 5,000 trials when rebuilt). A grid point is the claim's own, so a grid's is built per claim.
        if record.spec.sampler.name == "grid":
            return build_sampler(record.spec, claim_index=claim_index)
        key = (record.name, record.optuna_study_id)
        sampler = self._samplers.get(key)
        if sampler is None:
            prior = stored_prior(self.storage, record)
            sampler = self._samplers[key] = build_sampler(record.spec, claim_index=claim_index, prior=prior)
        return sampler

    def _pruner(self, record: StudyRecord) -> optuna.pruners.BasePruner:
        # One pruner per study, as Optuna's optimize keeps one: Hyperband builds a study for each
        # bracket (a lookup by name) once, not at every claim. One that finds its resources from the
        # finished trials when it first decides is built per claim, to see the trials as they are now.
        if pruner_reads_its_resources(record.spec):
            return build_pruner(record.spec)
        key = (record.name, record.optuna_study_id)
        pruner = self._pruners.get(key)
        if pruner is None:
            pruner = self._pruners[key] = build_pruner(record.spec)
        return pruner

    def _sample(self, record: StudyRecord, frozen: FrozenTrial) -> optuna.Study:
        study = self._study(record)
        study.sampler = self._sampler(record, claim_index=record.n_claimed - 1)
        study.pruner = self._pruner(record)
        sample_params(study, frozen, distributions(record.spec.space), conditions(record.spec.space))
        return study

    def _write_params(self, held: Held, trial: FrozenTrial) -> None:
        with self._begin() as connection:
            lock_held(connection, held)
            trial_rows.add_params(connection, trial._trial_id, trial.params, trial.distributions)

    def _vanished(self, held: Held) -> bool:
        """Whether a trial just claimed went with its study (deleted or renamed outside tunefleet)."""
        try:
            with self._begin() as connection:
                lock_held(connection, held)
        except TrialVanished:
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        # The trial's row may still be there while its study is not (a sampler read the study as it went).
        try:
            return self.storage.get_study_id_from_name(held.study_name) != held.study_id
        except KeyError:
            return True

    def claim(
        self,
        worker: WorkerIdentity,
        *,
        study_names: Sequence[str] | None = None,
        can_run: Callable[[StudySpec], bool] | None = None,
    ) -> Claim | None:
        """Claim the next trial of a runnable study within its budget, or None when there is nothing to do.

        can_run(spec) leaves out the studies this worker may not run (an entry point its operator does not
        allow), so their trials wait for a worker that may, instead of failing here.
        WorkerDeclaredLost if the worker's registry row says it was declared lost (nothing is claimed).
        A study deleted or renamed outside tunefleet while a trial of it is being claimed is passed over.
        """
        started = time.perf_counter()
        for attempt in range(CLAIM_ATTEMPTS):
            try:
                return self._claim(worker, study_names, can_run, started)
            except TrialVanished as gone:
                log.warning("%s while being claimed; claiming another", gone)
            except sa.exc.IntegrityError:
                # PostgreSQL refuses a trial for a study deleted after the claim picked it.
                if attempt == CLAIM_ATTEMPTS - 1:
                    raise
        return None

    def _claim(
        self,
        worker: WorkerIdentity,
        study_names: Sequence[str] | None,
        can_run: Callable[[StudySpec], bool] | None,
        started: float,
    ) -> Claim | None:
        taken = self._take_trial(worker, study_names, can_run)
        if taken is None:
            return None
        record, new, tags = taken
        spec = record.spec
        held = Held(new.trial_id, record.optuna_study_id, new.number, worker.worker_id, record.name)
        # The trial is claimed and held: each step from here is retried on its own through a store
        # outage (a parameter already drawn is kept, not drawn again), never by claiming anew.
        try:
            frozen = with_retry(
                partial(self._frozen, new, tags), what="read a queued trial", reset=self.reset_session
            )
            study = with_retry(
                partial(self._sample, record, frozen), what="sample parameters", reset=self.reset_session
            )
            with_retry(
                partial(self._write_params, held, frozen),
                what="record parameters",
                reset=self.reset_session,
            )
        except optuna.exceptions.UpdateFinishedTrialError:
            # This worker stalled mid-claim and a reaper already failed (and re-queued) the trial.
            return None
        except (GaveUp, TrialVanished):
            raise
        except Exception as error:
            # Reading or sampling a study deleted meanwhile fails, with Optuna's KeyError or another.
            if not is_transient(error) and self._vanished(held):
                raise TrialVanished(record.name, new.number) from None
            # A sampler that cannot sample is this trial's failure, recorded, not a trial left RUNNING.
            try:
                self._end(
                    held,
                    TrialState.FAIL,
                    None,
                    {"fail_reason": f"sampling failed: {type(error).__name__}: {error}"[:2000]},
                )
            except Exception as also:
                error.add_note(f"and the trial could not be failed: {type(also).__name__}: {also}")
            raise
        return Claim(
            study_name=record.name,
            spec=spec,
            study=study,
            trial=ClaimedTrial(study, frozen, self.storage),
            claim_index=record.n_claimed - 1,
            seed=int(tags["seed"]),
            params=dict(frozen.params),
            claim_s=time.perf_counter() - started,
            worker_id=worker.worker_id,
        )
