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
