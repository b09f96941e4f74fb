"""Optuna's Hyperband pruner, building the study a bracket sees once per pruner, not at every decision."""

from __future__ import annotations

from typing import Any

import optuna

from studies._optuna.internals import forget_cached_trials


class HyperbandPruner(optuna.pruners.HyperbandPruner):
    """optuna.pruners.HyperbandPruner, keeping each bracket's study.

    Optuna builds a new Study for the trial's bracket at each pruner decision and each filtered sample,
    and a Study's constructor looks its id up by name in the store: a query every time. Kept by study id
    and bracket, each is built once for as long as the pruner lives (a worker keeps one per study,
    claim.py), and each is handed out as a new one would be, with no snapshot of the study's trials.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._brackets: dict[tuple[int, int], optuna.Study] = {}

    def _create_bracket_study(self, study: optuna.Study, bracket_id: int) -> optuna.Study:
        key = (study._study_id, bracket_id)
        bracket = self._brackets.get(key)
        if bracket is None:
            bracket = self._brackets[key] = super()._create_bracket_study(study, bracket_id)
        # As a new one: no snapshot of the trials kept from an earlier sample (TPE reads it, use_cache).
        forget_cached_trials(bracket)
        return bracket
