"""The shared core of tunefleet: the study spec, its search space, the store and the claim of a trial."""

from studies.errors import (
    InvalidStudyState,
    StoreUnavailable,
    StudyAlreadyExists,
    StudyNotFound,
    TrialNotFound,
    TunefleetError,
)
from studies.records import Claim, StudyProgress, StudyRecord, WorkerIdentity
from studies.repository import StudyRepository
from studies.spec import StudySpec, load_spec_file, preset_path
from studies.storage import DEFAULT_DATABASE_URL, mask_url, open_storage

__all__ = [
    "DEFAULT_DATABASE_URL",
    "Claim",
    "InvalidStudyState",
    "StoreUnavailable",
    "StudyAlreadyExists",
    "StudyNotFound",
    "StudyProgress",
    "StudyRecord",
    "StudyRepository",
    "StudySpec",
    "TrialNotFound",
    "TunefleetError",
    "WorkerIdentity",
    "load_spec_file",
    "mask_url",
    "open_storage",
    "preset_path",
]
