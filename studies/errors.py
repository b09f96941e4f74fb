"""Domain errors of tunefleet; the service maps each class to one HTTP status in one table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studies.records import StudyRecord


class TunefleetError(Exception):
    """Base of every domain error; `code` is the stable machine-readable name."""

    code = "tunefleet_error"


class StudyNotFound(TunefleetError):
    """No study of that name exists in the store."""

    code = "study_not_found"

    def __init__(self, study_name: str) -> None:
        super().__init__(f"study {study_name!r} not found")
        self.study_name = study_name


class StudyAlreadyExists(TunefleetError):
    """A study of that name already exists (ours or a plain Optuna study in the same store)."""

    code = "study_exists"

    def __init__(self, study_name: str) -> None:
        super().__init__(f"study {study_name!r} already exists")
        self.study_name = study_name


class TrialNotFound(TunefleetError):
    """The study has no trial with that number."""

    code = "trial_not_found"

    def __init__(self, study_name: str, number: int) -> None:
        super().__init__(f"study {study_name!r} has no trial number {number}")


class InvalidStudyState(TunefleetError):
    """The study is in a state that does not allow the operation."""

    code = "invalid_study_state"


class StoreUnavailable(TunefleetError):
    """The shared SQL store cannot be reached."""

    code = "store_unavailable"


class AuthenticationRequired(TunefleetError):
    """The request carries no bearer token, or one the service does not know."""

    code = "unauthorized"


class PermissionDenied(TunefleetError):
    """The token is valid but may not do this (a read-only token on a mutating route)."""

    code = "forbidden"


class PayloadTooLarge(TunefleetError):
    """The request body is larger than the service accepts."""

    code = "payload_too_large"


class BestModelNotFound(TunefleetError):
    """The study has no downloadable best model (yet): no completed trial, or its weights are not stored."""

    code = "best_model_not_found"

    def __init__(self, study_name: str, why: str) -> None:
        super().__init__(f"study {study_name!r} has no best model: {why}")
        self.study_name = study_name


class WorkerDeclaredLost(TunefleetError):
    """The worker's registry row says it was declared lost: it must register again before claiming."""

    code = "worker_declared_lost"

    def __init__(self, worker_id: str) -> None:
        super().__init__(f"worker {worker_id} was declared lost; register again")
        self.worker_id = worker_id


class TrialVanished(TunefleetError):
    """A claimed trial is gone: its study was deleted or renamed outside tunefleet (optuna-dashboard, the optuna
    CLI), or another trial now has its id. Its worker drops it and claims the next."""

    code = "trial_vanished"

    def __init__(self, study_name: str, number: int) -> None:
        super().__init__(
            f"trial {number} of {study_name} is gone: its study was deleted or renamed outside tunefleet"
        )
        self.study_name = study_name
        self.number = number


class NotOnParetoFront(BestModelNotFound):
    """The trial asked for is not on the study's Pareto front (or is not its best trial, for one objective)."""

    code = "not_on_pareto_front"


@dataclass(frozen=True)
class ParamProblem:
    """Why one parameter of one enqueued set was refused."""

    index: int
    name: str
    message: str


class ParamsRejected(TunefleetError):
    """Some enqueued parameter set does not fit the study's space; `problems` says which parameter and why."""

    code = "invalid_params"

    def __init__(self, problems: list[ParamProblem]) -> None:
        super().__init__("; ".join(f"trials[{p.index}].params.{p.name}: {p.message}" for p in problems[:10]))
        self.problems = problems


class StudyFinished(InvalidStudyState):
    """The study is completed or failed: a trial enqueued now would never run."""

    code = "study_finished"


class BudgetExceeded(InvalidStudyState):
    """More trials enqueued than the study's budget has slots left for; `slots_left` says how many it has."""

    code = "budget_exceeded"

    def __init__(
        self, study_name: str, slots_left: int, wanted: int, record: StudyRecord, waiting: int
    ) -> None:
        super().__init__(
            f"study {study_name!r} has {slots_left} trial slots left, not {wanted}: its budget is"
            f" {record.n_trials} trials, {record.n_claimed} claimed and {waiting} queued"
        )
        self.slots_left = slots_left


class GridStudy(InvalidStudyState):
    """A grid study runs each of its points once: an enqueued trial would take one point's place."""

    code = "grid_study"


class WarmStartRejected(TunefleetError):
    """A study named in warm_start.studies cannot be learnt from; `problems` holds (index, why) for each (index
    None: warm_start.studies as a whole, as builtin for a study that is not of the built-in model)."""

    code = "invalid_warm_start"

    def __init__(self, problems: list[tuple[int | None, str]]) -> None:
        super().__init__(
            "; ".join(f"warm_start.studies{'' if i is None else f'[{i}]'}: {why}" for i, why in problems)
        )
        self.problems = problems
