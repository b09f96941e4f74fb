"""Domain errors of tunefleet; the service maps each class to one HTTP status in one table."""


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
