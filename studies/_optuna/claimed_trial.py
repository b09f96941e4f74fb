"""An optuna.Trial built from the rows a claim has just written, without reading them back."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial


class ClaimedTrial(optuna.Trial):
    """An optuna.Trial over a trial the claim has just written, built from what it wrote.

    optuna.Trial's constructor reads the whole trial back (six queries) and would re-run the
    sampler's before_trial hook; the claim already holds both the trial and its parameters.
    """

    def __init__(self, study: optuna.Study, frozen: FrozenTrial) -> None:
        self.study = study
        self._trial_id = frozen._trial_id
        self.storage = study._storage
        self._cached_frozen_trial = frozen
        self.relative_search_space = None
        self._relative_params = None
        self._fixed_params = frozen.system_attrs.get("fixed_params", {})
