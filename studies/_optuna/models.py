"""Optuna's SQLAlchemy table models, for counting, paging and writing trials in SQL beside Optuna's storage."""

from optuna.storages._rdb.models import (
    NOT_FOUND_MSG,
    BaseModel,
    StudyModel,
    StudyUserAttributeModel,
    TrialHeartbeatModel,
    TrialIntermediateValueModel,
    TrialModel,
    TrialParamModel,
    TrialSystemAttributeModel,
    TrialUserAttributeModel,
    TrialValueModel,
)

__all__ = [
    "NOT_FOUND_MSG",
    "BaseModel",
    "StudyModel",
    "StudyUserAttributeModel",
    "TrialHeartbeatModel",
    "TrialIntermediateValueModel",
    "TrialModel",
    "TrialParamModel",
    "TrialSystemAttributeModel",
    "TrialUserAttributeModel",
    "TrialValueModel",
]
