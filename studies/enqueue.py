"""Enqueued trials: parameter sets a user already trusts, checked against the study's space and queued in its budget."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from optuna.trial import TrialState

from studies._optuna import study_page, trial_rows
from studies._optuna.models import TrialSystemAttributeModel
from studies.catalog import StudyCatalog
from studies.errors import (
    BudgetExceeded,
    GridStudy,
    ParamProblem,
    ParamsRejected,
    StudyFinished,
    StudyNotFound,
)
from studies.records import StudyRecord, record_from_row
from studies.spec import Comparison, FreeSpace, Param, Space
from studies.states import StudyState
from studies.tables import studies_table, utcnow

# The user attribute that marks a trial as enqueued by a user, for the dashboard and `study trials`.
ENQUEUED_ATTR = "enqueued"
# The system attribute Optuna's enqueue_trial writes and sampling reads: values the sampler must not draw.
FIXED_PARAMS_ATTR = "fixed_params"
MAX_ENQUEUED_AT_ONCE = 1000
# Names listed in an unknown parameter's error; a free space can have hundreds.
NAMES_SHOWN = 20
# Problems reported at most: a body of thousands of bad values would otherwise get an answer many times its size.
PROBLEMS_SHOWN = 100


@dataclass(frozen=True)
class Enqueued:
    """Trials just queued: their numbers, in the order given, and the budget's slots still free."""

    numbers: list[int]
    slots_left: int


def _condition_text(parent: str, wanted: Any) -> str:
    if isinstance(wanted, Comparison):
        bounds = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
        return " and ".join(f"{parent} {bounds[k]} {v}" for k, v in wanted.model_dump().items())
    if isinstance(wanted, list):
        return f"{parent} is one of {', '.join(map(repr, wanted))}"
    return f"{parent} is {wanted!r}"


def check_params(
    space: Space | FreeSpace, params: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The given values as trials record them, and (name, why) for each one the space refuses.

    A parameter left out is drawn by the sampler. A conditional one may be given only when its
    condition holds on the values given (or fixed): given while it does not, or while the parameter it
    depends on is left to the sampler, it is refused rather than silently dropped at the claim.
    """
    declared = space.params()
    problems: list[tuple[str, str]] = []
    for name in params:
        if name not in declared:
            names = list(declared)
            listed = ", ".join(names[:NAMES_SHOWN]) + (", ..." if len(names) > NAMES_SHOWN else "")
            problems.append((name, f"unknown parameter; the space has {listed}"))
    checked: dict[str, Any] = {}
    # Values certain at the claim: given, or fixed in the space. Parameters never drawn: `absent`.
    # Given but refused, or given with its condition undecided: `unsettled` (its dependents are not judged).
    known: dict[str, Any] = {}
    absent: set[str] = set()
    unsettled: set[str] = set()
    for name, param in declared.items():
        applies = _applies(param, known, absent)
        if applies is False:
            absent.add(name)
            if name in params:
                problems.append((name, _not_drawn(param, known)))
            continue
        if name not in params:
            if applies and param.type == "fixed":
                known[name] = param.value
            continue
        try:
            value = param.check_value(params[name])
        except ValueError as error:
            unsettled.add(name)
            problems.append((name, str(error)))
            continue
        if applies is None:
            unsettled.add(name)
            if not _parent_unsettled(param, unsettled):
                ((parent, wanted),) = (param.when or {}).items()
                problems.append(
                    (name, f"is drawn only when {_condition_text(parent, wanted)}: give {parent} as well")
                )
            continue
        known[name] = checked[name] = value
    return checked, problems


def _applies(param: Param, known: Mapping[str, Any], absent: set[str]) -> bool | None:
    """Whether the parameter is drawn at the claim: True, False, or None when that is up to the sampler."""
    if not param.when:
        return True
    ((parent, _),) = param.when.items()
    if parent in absent:
        return False
    if parent in known:
        return param.applies(known)
    return None


def _parent_unsettled(param: Param, unsettled: set[str]) -> bool:
    # The parent's own error says what is wrong; a second one about the condition would only repeat it.
    return bool(param.when) and next(iter(param.when or {})) in unsettled


def _not_drawn(param: Param, known: Mapping[str, Any]) -> str:
    ((parent, wanted),) = (param.when or {}).items()
    state = f"{parent} is {known[parent]!r}" if parent in known else f"{parent} is not drawn"
    return f"is drawn only when {_condition_text(parent, wanted)}, and {state}"


def check_param_sets(
    space: Space | FreeSpace, param_sets: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Every set as trials record it; ParamsRejected naming each set and parameter the space refuses (the first
    PROBLEMS_SHOWN)."""
    checked: list[dict[str, Any]] = []
    problems: list[ParamProblem] = []
    for index, params in enumerate(param_sets):
        values, found = check_params(space, params)
        checked.append(values)
        problems += [ParamProblem(index, name, message) for name, message in found]
        if len(problems) >= PROBLEMS_SHOWN:
            break
    if problems:
        raise ParamsRejected(problems[:PROBLEMS_SHOWN])
    return checked


class TrialQueue(StudyCatalog):
    """Queues known parameter sets as WAITING trials, which claims take before drawing new ones."""

    def enqueue(
        self,
        study_name: str,
        param_sets: Sequence[Mapping[str, Any]],
        user_attrs: Sequence[Mapping[str, Any]] | None = None,
    ) -> Enqueued:
        """Queue one trial per parameter set, in order, within the study's budget; parameters left out are
        drawn by the sampler at the claim. `user_attrs`, one mapping per set, are recorded on its trial beside
        `enqueued` (warm start's `warm_start_from`).

        StudyNotFound; ParamsRejected when a set does not fit the space; StudyFinished for a completed or
        failed study (a stopped one takes them, to run on resume); GridStudy; BudgetExceeded when the
        budget has fewer slots left than sets given (nothing is queued then).
        """
        c = studies_table.c
        with self._begin() as connection:
            # Claims take the same row lock (their budget slot) before they take a queued trial, so the
            # queue and the slots are counted here as no claim or other enqueue can change them.
            row = connection.execute(
                studies_table.update()
                .where(c.study_name == study_name, self._alive())
                .values(updated_at=utcnow())
                .returning(*studies_table.c)
            ).first()
            if row is None:
                raise StudyNotFound(study_name)
            record = record_from_row(row)
            if record.spec.sampler.name == "grid":
                raise GridStudy(
                    f"study {study_name!r} searches a grid, each point once: an enqueued trial would take a"
                    " point's place; enqueue into a study with another sampler"
                )
            checked = check_param_sets(record.spec.space, param_sets)
            queued, unfinished = self._queue_counts(connection, record)
            self._check_open(record, queued, unfinished)
            slots_left = record.n_trials - record.n_claimed - queued
            if len(checked) > slots_left:
                raise BudgetExceeded(study_name, max(slots_left, 0), len(checked), record, queued)
            numbers = self._insert_waiting(connection, record, checked, user_attrs)
        return Enqueued(numbers=numbers, slots_left=slots_left - len(checked))

    @staticmethod
    def _queue_counts(connection: sa.Connection, record: StudyRecord) -> tuple[int, int]:
        """The study's queued trials (a paused one holds its slot already, in n_claimed) and its trials that
        are running or paused: those that may still run."""
        counts = study_page.trial_counts(connection, [record.optuna_study_id])[record.optuna_study_id]
        queued = counts.by_state.get(TrialState.WAITING, 0)
        return queued, counts.by_state.get(TrialState.RUNNING, 0) + counts.paused

    @staticmethod
    def _check_open(record: StudyRecord, queued: int, unfinished: int) -> None:
        name = record.name
        if record.state == StudyState.FAILED:
            raise StudyFinished(
                f"study {name!r} failed ({record.state_reason or 'no reason recorded'}): no trial of it runs again"
            )
        if record.deadline_at is not None and record.deadline_at <= utcnow():
            raise StudyFinished(
                f"study {name!r} is past its deadline (budget.timeout_s): no trial of it runs again"
            )
        if (
            record.state == StudyState.RUNNING
            and record.n_claimed >= record.n_trials
            and not queued + unfinished
        ):
            raise StudyFinished(
                f"study {name!r} is completed: its budget of {record.n_trials} trials is spent"
            )

    @staticmethod
    def _insert_waiting(
        connection: sa.Connection,
        record: StudyRecord,
        checked: list[dict[str, Any]],
        user_attrs: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        now = utcnow()
        numbers: list[int] = []
        attrs: list[dict[str, Any]] = []
        fixed: list[dict[str, Any]] = []
        for index, params in enumerate(checked):
            # Made as Optuna's add_trial makes a queued trial: numbered as a new trial, then WAITING, not started.
            new = trial_rows.insert_running_trial(connection, record.optuna_study_id, now)
            connection.execute(
                trial_rows.trials.update()
                .where(trial_rows.trials.c.trial_id == new.trial_id)
                .values(state=TrialState.WAITING, datetime_start=None)
            )
            numbers.append(new.number)
            attrs.append({"trial_id": new.trial_id, "key": ENQUEUED_ATTR, "value_json": json.dumps(True)})
            extra = user_attrs[index] if user_attrs is not None else {}
            attrs += [
                {"trial_id": new.trial_id, "key": k, "value_json": json.dumps(v)} for k, v in extra.items()
            ]
            fixed.append(
                {"trial_id": new.trial_id, "key": FIXED_PARAMS_ATTR, "value_json": json.dumps(params)}
            )
        if checked:
            connection.execute(trial_rows.user_attrs.insert(), attrs)
            connection.execute(TrialSystemAttributeModel.__table__.insert(), fixed)
        return numbers
