"""A claimed trial's life after its claim: reported, finished, handed back, or retried when its worker is lost."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from studies import promotion
from studies._optuna import trial_rows
from studies._optuna.internals import filter_study, forget_cached_trials, frozen_trial_of
from studies._optuna.models import StudyModel, TrialModel
from studies.catalog import StudyCatalog
from studies.checkpoints import CHECKPOINT_ATTR, CheckpointRef
from studies.errors import StudyNotFound, TrialVanished
from studies.records import Claim
from studies.resilience import is_transient
from studies.spec import AshaPruner
from studies.states import WORKER_ALIVE, StopReason, StudyState, WorkerState
from studies.tables import studies_table, utcnow, workers_table

# The fail_reason of a RUNNING trial that a claim tagged but that no worker runs, in a study tunefleet does
# not know: optuna-dashboard's rename copies a study's trials, running ones included, then deletes it.
# The user attribute of a trial an asha pruner paused: the rung's epoch it was paused after (kept once it ends).
PAUSED_AT_EPOCH = "paused_at_epoch"
COPIED_WHILE_RUNNING = (
    "copied while running: its study was renamed or copied outside tunefleet, and no worker runs it"
)


@dataclass(frozen=True)
class Held:
    """A claimed trial as its claim knows it: the id, and what tells it from another trial given that id."""

    trial_id: int
    study_id: int
    number: int
    worker_id: str
    study_name: str

    @classmethod
    def of(cls, claim: Claim) -> Held:
        """The claim's trial."""
        return cls(
            claim.trial._trial_id,
            claim.study._study_id,
            claim.trial.number,
            claim.worker_id,
            claim.study_name,
        )


def lock_held(connection: sa.Connection, held: Held) -> None:
    """Lock a claimed trial's row for this transaction; TrialVanished unless it is still the claim's trial,
    UpdateFinishedTrialError unless it is still RUNNING."""
    locked = trial_rows.lock(connection, held.trial_id)
    # The claim tagged its trial with its worker's id, in the claim's transaction.
    if locked is None or (locked.study_id, locked.number, locked.worker_id) != (
        held.study_id,
        held.number,
        held.worker_id,
    ):
        raise TrialVanished(held.study_name, held.number)
    if locked.state != TrialState.RUNNING:
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial {held.number} of {held.study_name} is {locked.state.name}, not RUNNING: it cannot be updated"
        )


class TrialLifecycle(StudyCatalog):
    """Reports and ends claimed trials (complete, pruned, failed), hands them back, retries lost ones, trips
    the breaker. Each write first checks that the trial is still the claim's (TrialVanished if not)."""

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Set several user attributes of an unfinished trial in one transaction."""
        with self._begin() as connection:
            trial_rows.lock_running(connection, trial_id)
            trial_rows.set_user_attrs(connection, trial_id, attrs)

    def still_claimed(self, claim: Claim) -> bool:
        """Whether the claim's trial is still there and still the claim's, whatever its state."""
        with self._begin() as connection:
            try:
                lock_held(connection, Held.of(claim))
            except TrialVanished:
                return False
            except optuna.exceptions.UpdateFinishedTrialError:
                return True
        return True

    def report(self, claim: Claim, value: float, step: int) -> None:
        """Record the trial's value at step (an epoch), as Trial.report does, checked to be the claim's trial.

        TrialVanished if it is gone, UpdateFinishedTrialError if it has ended (a reaper retried it).
        """
        # Trial.report writes by id alone: into a stranger's trial, once SQLite has given a deleted
        # trial's id to a new one. One transaction checks and writes.
        frozen = frozen_trial_of(claim.trial)
        value = float(value)
        if step in frozen.intermediate_values:
            return  # as Trial.report: a step is reported once
        with self._begin() as connection:
            lock_held(connection, Held.of(claim))
            trial_rows.set_intermediate_value(connection, claim.trial._trial_id, step, value)
        frozen.intermediate_values[step] = value

    def passes_rung(self, claim: Claim, epoch: int) -> bool:
        """Whether the claim's trial, having reported at a rung of its study's asha pruner, is among the best
        1/reduction_factor of the trials that reached that rung, and so goes on without pausing."""
        pruner = claim.spec.pruner
        assert isinstance(pruner, AshaPruner)
        minimize = claim.spec.objective.epoch_direction == "minimize"
        with self._begin() as connection:
            return promotion.passes_rung(
                connection,
                claim.study._study_id,
                epoch,
                claim.trial.number,
                pruner.reduction_factor,
                minimize=minimize,
            )

    def pause(self, claim: Claim, epoch: int, attrs: dict[str, Any]) -> None:
        """Pause the claim's trial after a rung's epoch: WAITING, its per-epoch values and checkpoint kept and its
        budget slot held, until a claim promotes it or the study's end prunes it (settle_paused)."""
        held = Held.of(claim)
        with self._begin() as connection:
            lock_held(connection, held)
            trial_rows.set_user_attrs(connection, held.trial_id, {**attrs, PAUSED_AT_EPOCH: epoch})
            promotion.pause_trial(connection, held.trial_id, epoch)
            if held.worker_id:
                self._release(connection, held.worker_id, held.trial_id)

    def settle_paused(self, study_name: str) -> list[CheckpointRef]:
        """End PRUNED the paused trials that nothing can promote any more; the checkpoints they leave behind.

        That is every paused trial of a study that no longer runs (stopped or failed), and of a running study whose
        budget is spent (its trials all claimed, or its deadline passed) once none of its trials runs or waits to
        run and none of its paused trials is among the best share of its rung. Called after a trial of an asha
        study ends or pauses, and when a study stops; any caller may, as often as it likes.
        """
        try:
            record = self.get(study_name)
        except StudyNotFound:
            return []
        pruner = record.spec.pruner
        if not isinstance(pruner, AshaPruner):
            return []
        study_id = record.optuna_study_id
        reason: str | None = None
        late = record.deadline_at is not None and record.deadline_at <= utcnow()
        # Called after every trial of an asha study: while its budget lasts, without reading its paused trials.
        if record.state == StudyState.RUNNING and not late and record.n_claimed < record.n_trials:
            return []
        with self._begin() as connection:
            paused = promotion.paused_trials(connection, study_id)
            if not paused:
                return []
            if record.state == StudyState.RUNNING:
                if promotion.active_trials(connection, study_id):
                    return []
                minimize = record.spec.objective.epoch_direction == "minimize"
                if not late and promotion.promotable(
                    connection, study_id, pruner.reduction_factor, minimize=minimize
                ):
                    return []
            else:
                reason = StopReason.STUDY_STOPPED
            now = utcnow()
            ended = [p for p in paused if promotion.end_paused(connection, p, now) is not None]
            checkpoints: list[CheckpointRef] = []
            for p in ended:
                if reason is not None:
                    trial_rows.set_user_attrs(connection, p.trial_id, {"fail_reason": reason})
                ref = CheckpointRef.of(trial_rows.system_attr(connection, p.trial_id, CHECKPOINT_ATTR))
                if ref is not None:
                    checkpoints.append(ref)
        return checkpoints

    def settle_all_paused(self) -> list[CheckpointRef]:
        """settle_paused for every study with paused trials (the reaper's sweep: a study stopped, or past its
        deadline, while no trial of it ran); the checkpoints the ended trials leave behind."""
        c = studies_table.c
        with self._begin() as connection:
            names = connection.execute(
                sa.select(c.study_name).where(
                    promotion.has_paused_trials(c.optuna_study_id, correlate=studies_table)
                )
            ).scalars()
            studies = list(names)
        return [checkpoint for name in studies for checkpoint in self.settle_paused(name)]

    def save_checkpoint(self, claim: Claim, checkpoint: CheckpointRef) -> None:
        """Name the trial's latest checkpoint, checked to be the claim's running trial."""
        with self._begin() as connection:
            lock_held(connection, Held.of(claim))
            trial_rows.set_system_attrs(
                connection, claim.trial._trial_id, {CHECKPOINT_ATTR: checkpoint.to_json()}
            )

    def checkpoint_of(self, claim: Claim) -> CheckpointRef | None:
        """The claim's trial's latest checkpoint: its own, or the one a retried trial had; None if none."""
        with self._begin() as connection:
            return CheckpointRef.of(
                trial_rows.system_attr(connection, claim.trial._trial_id, CHECKPOINT_ATTR)
            )

    def _end(
        self,
        held: Held,
        state: TrialState,
        values: list[float] | None,
        attrs: dict[str, Any],
        constraints: Mapping[str, float] | None = None,
    ) -> None:
        with self._begin() as connection:
            lock_held(connection, held)
            trial_rows.set_user_attrs(connection, held.trial_id, attrs)
            trial_rows.set_constraints(connection, held.trial_id, constraints or {})
            trial_rows.finish(connection, held.trial_id, state, values, utcnow())
            if held.worker_id:
                self._release(connection, held.worker_id, held.trial_id)

    def _finish(
        self,
        claim: Claim,
        state: TrialState,
        values: list[float] | None,
        attrs: dict[str, Any],
        constraints: Mapping[str, float] | None = None,
    ) -> None:
        # Study.tell's rules and hooks, then one transaction for the attributes, values, constraints, state
        # and the worker's registry row (Study.tell would take one per attribute and two more).
        frozen = frozen_trial_of(claim.trial)
        n_objectives = len(claim.spec.objective.names)
        if (
            state == TrialState.PRUNED
            and values is None
            and frozen.last_step is not None
            and n_objectives == 1
        ):
            # As Study.tell does: a pruned trial's value is its last reported one, when finite (and
            # there is one objective for it to be the value of).
            last = frozen.intermediate_values[frozen.last_step]
            values = [last] if math.isfinite(last) else None
        if values is not None and len(values) != n_objectives:
            raise ValueError(f"{len(values)} values for a study of {n_objectives} objectives")
        if state == TrialState.COMPLETE and (values is None or any(math.isnan(v) for v in values)):
            state, values = TrialState.FAIL, None
            attrs = {**attrs, "fail_reason": "the objective value is not a number"}
        study = claim.study
        try:
            forget_cached_trials(study)
            filtered = filter_study(study, frozen)
            study.sampler.after_trial(filtered, frozen, state, values)
        except Exception as error:
            # A sampler that reads the study's trials (grid) fails on a study deleted meanwhile.
            if not is_transient(error) and not self.still_claimed(claim):
                raise TrialVanished(claim.study_name, claim.trial.number) from None
            raise
        self._end(Held.of(claim), state, values, attrs, constraints)

    def complete(
        self,
        claim: Claim,
        value: float | Sequence[float],
        attrs: dict[str, Any],
        constraints: Mapping[str, float] | None = None,
    ) -> None:
        """End the trial COMPLETE with its objective value (one per objective, in the study's order), result
        attributes, and constraint values by name (above 0: broken, as Optuna's samplers read them)."""
        values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
        self._finish(claim, TrialState.COMPLETE, values, attrs, constraints)

    def prune(self, claim: Claim, attrs: dict[str, Any]) -> None:
        """End the trial PRUNED (its last reported value stands as its value)."""
        self._finish(claim, TrialState.PRUNED, None, attrs)

    def fail(self, claim: Claim, reason: str, attrs: dict[str, Any] | None = None) -> None:
        """End the trial FAIL with the reason recorded as `fail_reason`; trip the study's breaker if due."""
        self._finish(claim, TrialState.FAIL, None, {**(attrs or {}), "fail_reason": reason[:2000]})
        self._trip_breaker_if_due(claim.study_name)

    def give_back(self, claim: Claim) -> None:
        """Put an unfinished trial back in the queue, same number, parameters and seed, not failed.

        Its per-epoch values are cleared: a rerun reports them again, from its checkpoint or by training them.
        """
        trial_id = claim.trial._trial_id
        with self._begin() as connection:
            lock_held(connection, Held.of(claim))
            trial_rows.requeue(connection, trial_id)
            self._give_slot_back(connection, claim.study_name)
            if claim.worker_id:
                self._release(connection, claim.worker_id, trial_id)

    def _give_slot_back(self, connection: sa.Connection, study_name: str) -> None:
        c = studies_table.c
        connection.execute(
            studies_table.update()
            .where(c.study_name == study_name, c.n_claimed > 0)
            .values(n_claimed=c.n_claimed - 1, updated_at=utcnow())
        )

    @staticmethod
    def _release(connection: sa.Connection, worker_id: str, trial_id: int) -> None:
        c = workers_table.c
        connection.execute(
            workers_table.update()
            .where(c.worker_id == worker_id, c.trial_id == trial_id, c.state.in_(WORKER_ALIVE))
            .values(
                state=WorkerState.IDLE,
                study_name=None,
                trial_id=None,
                trial_number=None,
                heartbeat_at=utcnow(),
            )
        )

    def retry_lost_trial(self, trial_id: int, reason: str, held_by: str | None = None) -> FrozenTrial | None:
        """Fail a running trial whose worker is gone and queue a copy (same parameters and seed)
        within the study's max_retries; None if the trial had already finished, or is gone with its study,
        or (held_by: the lost worker's id) is now run by another worker."""
        try:
            trial = self.storage.get_trial(trial_id)
            if trial.state != TrialState.RUNNING:
                return None
            # SQLite reuses a deleted trial's id: a lost worker's row can name an id that, since its
            # study was deleted, belongs to a new trial a live worker runs. Each claim tags its worker.
            if held_by is not None and trial.user_attrs.get("worker_id", held_by) != held_by:
                return None
            study_name = self.storage.get_study_name_from_id(self._study_id_of(trial_id))
            record = self.get(study_name)
        except (KeyError, sa.exc.NoResultFound, StudyNotFound):
            # Its study was deleted (through the API, the dashboard or the optuna CLI) after the worker
            # was declared lost: nothing is left to fail or retry, and the sweep must go on.
            return None
        try:
            self.storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                return None
            retries = int(trial.user_attrs.get("retry", 0))
            if retries < record.spec.budget.max_retries:
                study = self._study(record)
                study.enqueue_trial(
                    trial.params,
                    user_attrs={
                        "retry_of": trial.number,
                        "retry": retries + 1,
                        "seed": trial.user_attrs.get("seed"),
                    },
                    skip_if_exists=False,
                )
                # The copy resumes where the lost worker's last checkpoint left the trial, past the rungs that
                # promoted it.
                inherited = {
                    key: trial.system_attrs[key]
                    for key in (CHECKPOINT_ATTR, promotion.PROMOTED_ATTR)
                    if key in trial.system_attrs
                }
                if inherited:
                    self._hand_on(study, trial, retries + 1, inherited)
                with self._begin() as connection:
                    self._give_slot_back(connection, study_name)
            return self.storage.get_trial(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            # The worker finished it after all, between our read and our write: its result stands.
            return None
        except KeyError:
            # Its study was deleted between our read and our writes: nothing is left to fail or retry.
            return None

    def _hand_on(self, study: optuna.Study, trial: FrozenTrial, retry: int, attrs: dict[str, Any]) -> None:
        copies = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if t.user_attrs.get("retry_of") == trial.number and t.user_attrs.get("retry") == retry
        ]
        if copies:
            copy = max(copies, key=lambda t: t.number)
            with self._begin() as connection:
                trial_rows.set_system_attrs(connection, copy._trial_id, attrs)

    def running_trials(self) -> dict[int, bool]:
        """The RUNNING trials the reaper looks after, by id, each True when its study is a tunefleet study.

        Those of every tunefleet study, and those a claim tagged in a study tunefleet does not know (copied
        while running by a rename in optuna-dashboard, or by optuna.copy_study); a plain Optuna study's own
        trials are not ours.
        """
        ours = (
            sa.exists()
            .where(
                studies_table.c.optuna_study_id == StudyModel.study_id,
                studies_table.c.study_name == StudyModel.study_name,
            )
            .correlate(StudyModel)
        )
        tagged = sa.exists().where(
            trial_rows.user_attrs.c.trial_id == TrialModel.trial_id,
            trial_rows.user_attrs.c.key == "worker_id",
        )
        with self._begin() as connection:
            rows = connection.execute(
                sa.select(TrialModel.trial_id, ours.label("ours"))
                .join(StudyModel, StudyModel.study_id == TrialModel.study_id)
                .where(TrialModel.state == TrialState.RUNNING, sa.or_(ours, tagged))
            ).all()
        return {int(row.trial_id): bool(row.ours) for row in rows}

    def fail_copied_trial(self, trial_id: int) -> tuple[str, int] | None:
        """End FAIL, with COPIED_WHILE_RUNNING, a RUNNING trial a claim tagged in a study tunefleet does not
        know; its study's name and its number, or None if it has ended, is gone, or is in a tunefleet study."""
        with self._begin() as connection:
            locked = trial_rows.lock(connection, trial_id)
            if locked is None or locked.state != TrialState.RUNNING or locked.worker_id is None:
                return None
            known = connection.execute(
                sa.select(studies_table.c.study_name)
                .join(
                    StudyModel,
                    sa.and_(
                        StudyModel.study_id == studies_table.c.optuna_study_id,
                        StudyModel.study_name == studies_table.c.study_name,
                    ),
                )
                .where(studies_table.c.optuna_study_id == locked.study_id)
            ).first()
            if known is not None:
                return None
            trial_rows.set_user_attrs(connection, trial_id, {"fail_reason": COPIED_WHILE_RUNNING})
            trial_rows.finish(connection, trial_id, TrialState.FAIL, None, utcnow())
            study_name = connection.execute(
                sa.select(StudyModel.study_name).where(StudyModel.study_id == locked.study_id)
            ).scalar_one()
        return str(study_name), locked.number

    def _study_id_of(self, trial_id: int) -> int:
        with self._begin() as connection:
            study_id = connection.execute(
                sa.select(TrialModel.study_id).where(TrialModel.trial_id == trial_id)
            ).scalar_one()
        # Optuna 5.1 types the column as nullable; a trial row always names its study.
        if study_id is None:
            raise LookupError(f"trial {trial_id} names no study")
        return int(study_id)

    def _trip_breaker_if_due(self, study_name: str) -> None:
        # A study whose first trials all fail the same way (a missing data file, a model that cannot
        # load) is broken, not unlucky: stop it before it burns the fleet's time on its whole budget.
        try:
            record = self.get(study_name)
        except StudyNotFound:
            return  # deleted outside tunefleet meanwhile: no study left to fail
        threshold = record.spec.budget.max_consecutive_failures
        if record.state != StudyState.RUNNING or threshold == 0:
            return
        counts = self.trial_counts(record)
        if counts["complete"] or counts["pruned"] or counts["fail"] < threshold:
            return
        failed = self.storage.get_all_trials(
            record.optuna_study_id, deepcopy=False, states=(TrialState.FAIL,)
        )
        reasons = [t.user_attrs.get("fail_reason") for t in failed if t.user_attrs.get("retry_of") is None]
        reasons = [r for r in reasons if r and not str(r).startswith(StopReason.WORKER_LOST)]
        if len(reasons) >= threshold and len(set(reasons[-threshold:])) == 1:
            self.set_state(
                study_name, StudyState.FAILED, f"the first {len(reasons)} trials failed: {reasons[-1]}"
            )
