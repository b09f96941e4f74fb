"""What loading a study's data found (duplicates dropped, conflicting labels, labels never validated), for its trials."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from studies.records import DATA_WARNINGS_ATTR

if TYPE_CHECKING:
    from worker.tasks.interface import TrialContext

DUPLICATES_ATTR = "data_duplicates_dropped"
CONFLICTS_ATTR = "data_conflicting_labels"
OVERLAP_ATTR = "data_validation_overlap_dropped"


@dataclass(frozen=True)
class DataReport:
    """The counts a user's own files gave and the warnings every trial on the data records.

    The counts are recorded only for local files (from_files): the built-in data sets come clean.
    """

    duplicates_dropped: int = 0
    conflicting_labels: int = 0
    validation_overlap_dropped: int = 0
    warnings: tuple[str, ...] = ()
    from_files: bool = False

    def attrs(self) -> dict[str, Any]:
        """The trial user attributes that say what the data held: counts (local files) and readable warnings."""
        attrs: dict[str, Any] = {}
        if self.from_files:
            attrs[DUPLICATES_ATTR] = self.duplicates_dropped
            attrs[CONFLICTS_ATTR] = self.conflicting_labels
            attrs[OVERLAP_ATTR] = self.validation_overlap_dropped
        if self.warnings:
            attrs[DATA_WARNINGS_ATTR] = list(self.warnings)
        return attrs


def note_on(trial: TrialContext, report: DataReport) -> None:
    """Record the report's attributes on a running trial."""
    for name, value in report.attrs().items():
        trial.note(name, value)
