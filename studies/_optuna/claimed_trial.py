"""An optuna.Trial built from the rows a claim has just written, without reading them back."""

from __future__ import annotations

import copy
from collections import UserDict
from collections.abc import Callable
from typing import Any, cast

import optuna
from optuna.trial import FrozenTrial


class ClaimedTrial(optuna.Trial):
    """An optuna.Trial over a trial the claim has just written, built from what it wrote.

    optuna.Trial's constructor reads the whole trial back (six queries) and would re-run the
    sampler's before_trial hook; the claim already holds both the trial and its parameters.
    `store` is the storage under the study's trial cache: the pruner's reads go to it directly.
    """

    def __init__(self, study: optuna.Study, frozen: FrozenTrial, store: optuna.storages.BaseStorage) -> None:
        self.study = study
        self._trial_id = frozen._trial_id
        self.storage = study._storage
        self._cached_frozen_trial = frozen
        self.relative_search_space = None
        self._relative_params = None
        self._fixed_params = frozen.system_attrs.get("fixed_params", {})
        self._store = store

    def should_prune(self) -> bool:
        """As optuna.Trial.should_prune, with the trial's system attributes (what Hyperband and successive
        halving read of it) read in one query when the pruner first looks, not with the whole trial."""
        if len(self.study.directions) > 1:
            raise NotImplementedError("Trial.should_prune is not supported for multi-objective optimization.")
        latest = copy.copy(self._cached_frozen_trial)
        read = self._store.get_trial_system_attrs
        latest.system_attrs = cast(dict[str, Any], LazyAttrs(lambda: read(self._trial_id)))
        return self.study.pruner.prune(self.study, latest)


class LazyAttrs(UserDict[str, Any]):
    """A dict read from the store on first use: most pruners never look at the trial's system attributes."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        # Not UserDict.__init__: it would fill `data` at once.
        self._read = read
        self._data: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._data = self._read()
        return self._data

    @data.setter
    def data(self, value: dict[str, Any]) -> None:
        self._data = value
