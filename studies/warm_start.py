"""Warm start from earlier studies: a portfolio of their best configurations, queued as a new study's first trials."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from optuna.storages import BaseStorage
from optuna.trial import TrialState

from studies.enqueue import TrialQueue, check_params
from studies.errors import WarmStartRejected
from studies.records import StudyRecord
from studies.spec import BUILTIN_SOURCES, SAME_MODEL, FreeSpace, Param, Space, StudySpec
from studies.states import StudyState

# The user attribute naming the trial a queued configuration came from: "<study>#<trial number>".
WARM_START_FROM_ATTR = "warm_start_from"
# The study user attribute that keeps what warm start queued, from where, and what it could not do.
WARM_START_STUDY_ATTR = "warm_start"
# same-model reads at most this many of the newest matching studies: enough to cover the tasks, bounded work.
MAX_SAME_MODEL_STUDIES = 50
# The study system attribute holding the prior's configurations: each source's best quarter, fitted to the space.
WARM_START_PRIOR_ATTR = "tunefleet:warm_start_prior"
# The share of each source study's completed trials the prior learns from (TPE's own "good" share), and at most.
PRIOR_SHARE = 0.25
MAX_PRIOR_PER_STUDY = 50
_HOLD_REASON = "warm start: queueing the portfolio"

# warm_start: {studies: builtin}: tunefleet's own recordings of head studies on the built-in model, one source
# study per task, written by `python -m bench.replay.portfolio` from bench/replay/data.
BUILTIN_PORTFOLIO_FILE = Path(__file__).parent / "portfolios" / "all-MiniLM-L6-v2-head.json"

Direction = Literal["minimize", "maximize"]


@dataclass(frozen=True)
class SourceTrial:
    """One completed trial of a source study: its number, parameters and objective value."""

    number: int
    params: Mapping[str, Any]
    value: float


@dataclass(frozen=True)
class SourceStudy:
    """An earlier study to learn from: its name, which way its value is better, and its completed trials."""

    name: str
    direction: Direction
    trials: Sequence[SourceTrial]


@dataclass(frozen=True)
class PortfolioEntry:
    """A chosen configuration, as the new study's space takes it, and the trial it came from."""

    params: dict[str, Any]
    study: str
    number: int

    @property
    def origin(self) -> str:
        """The source trial as `<study>#<number>`, the value of the warm_start_from attribute."""
        return f"{self.study}#{self.number}"


@dataclass
class _Candidate:
    params: dict[str, Any]
    # Normalised value (0 best, 1 worst) on each source study, by its index, where it was evaluated there.
    scores: dict[int, float]
    # (normalised value, source index, trial number) of the trial it is named after: the best of its copies.
    origin: tuple[float, int, int]
    study: str = ""


@dataclass(frozen=True)
class WarmStartReport:
    """What warm start did for a study: its sources, the trials it queued (number, origin, params), warnings."""

    sources: list[str]
    trials: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # How many of the sources' good configurations the sampler's prior holds (0: no prior).
    prior_configurations: int = 0

    def to_json(self) -> dict[str, Any]:
        """As stored in the study's user attribute."""
        return {
            "sources": self.sources,
            "trials": self.trials,
            "warnings": self.warnings,
            "prior_configurations": self.prior_configurations,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WarmStartReport:
        """From the study's user attribute."""
        return cls(
            sources=list(data.get("sources") or []),
            trials=list(data.get("trials") or []),
            warnings=list(data.get("warnings") or []),
            prior_configurations=int(data.get("prior_configurations") or 0),
        )


def normalised(values: Sequence[float], direction: Direction) -> list[float]:
    """Each value on [0, 1] within its study: 0 the study's best, 1 its worst (all 0 when they are equal)."""
    if not values:
        return []
    best = min(values) if direction == "minimize" else max(values)
    worst = max(values) if direction == "minimize" else min(values)
    spread = abs(worst - best)
    if spread == 0:
        return [0.0] * len(values)
    return [abs(v - best) / spread for v in values]


_REFUSED = object()


def _fit_value(param: Param, value: Any) -> Any:
    """The value as the new space takes it: a numeric one clipped into its range (and onto its step), a choice
    only if the space has it; _REFUSED otherwise."""
    if param.type in ("float", "int"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return _REFUSED
        assert param.low is not None and param.high is not None
        number = min(max(float(value), float(param.low)), float(param.high))
        if param.step is not None:
            steps = round((number - param.low) / param.step)
            number = param.low + steps * param.step
            if number > param.high:
                number -= param.step
            number = round(number, 12)
        value = round(number) if param.type == "int" else float(number)
    try:
        return param.check_value(value)
    except ValueError:
        return _REFUSED


def fit_to_space(space: Space | FreeSpace, params: Mapping[str, Any]) -> dict[str, Any] | None:
    """A source trial's parameters as the new study's space takes them, or None when it cannot.

    Walked in the space's order: a numeric value outside the new range is clipped into it (and onto its step);
    a value the space has no choice for refuses the whole configuration; a parameter the space does not search,
    or fixes, is left out (the space sets a fixed one); a conditional one is kept only when its condition holds
    on the values kept (width only with depth >= 1), else left to the sampler; one the source never drew is
    left to the sampler too.
    """
    fitted: dict[str, Any] = {}
    known: dict[str, Any] = {}
    for name, param in space.params().items():
        if param.when and not param.applies(known):
            continue
        if param.type == "fixed":
            known[name] = param.value
            continue
        if name not in params:
            continue
        value = _fit_value(param, params[name])
        if value is _REFUSED:
            return None
        fitted[name] = known[name] = value
    # The queue checks every set again; a set it would refuse is no warm start.
    _, problems = check_params(space, fitted)
    return fitted if fitted and not problems else None


def _candidates(sources: Sequence[SourceStudy], space: Space | FreeSpace) -> list[_Candidate]:
    by_key: dict[str, _Candidate] = {}
    for index, source in enumerate(sources):
        trials = [t for t in source.trials if math.isfinite(t.value)]
        scores = normalised([t.value for t in trials], source.direction)
        for trial, score in zip(trials, scores, strict=True):
            params = fit_to_space(space, trial.params)
            if params is None:
                continue
            # Copies of one configuration, in one study or several, are one candidate evaluated on each.
            key = json.dumps(params, sort_keys=True)
            origin = (score, index, trial.number)
            found = by_key.get(key)
            if found is None:
                by_key[key] = _Candidate(params, {index: score}, origin, source.name)
                continue
            found.scores[index] = min(found.scores.get(index, 1.0), score)
            if origin < found.origin:
                found.origin, found.study = origin, source.name
    return list(by_key.values())


def select_portfolio(
    sources: Sequence[SourceStudy], space: Space | FreeSpace, size: int
) -> list[PortfolioEntry]:
    """Up to `size` distinct configurations that together do best on every source study, in the order chosen.

    Greedy forward selection: each step adds the configuration that most lowers the sum, over the source
    studies, of the best normalised value any chosen configuration has on that study (1 where none was
    evaluated there). A configuration counts only on the studies that evaluated it (no estimate for the others).
    Once every study is covered by its best, the rest follow by their own normalised value. Ties go to the
    earlier source study, then the lower trial number. With one source this is its top `size` distinct
    configurations.
    """
    candidates = _candidates(sources, space)
    covered = [1.0] * len(sources)
    chosen: list[PortfolioEntry] = []
    while candidates and len(chosen) < size:

        def order(candidate: _Candidate) -> tuple[float, float, int, int]:
            gain = sum(max(0.0, covered[i] - score) for i, score in candidate.scores.items())
            score, index, number = candidate.origin
            return (-gain, score, index, number)

        best = min(candidates, key=order)
        candidates.remove(best)
        for i, score in best.scores.items():
            covered[i] = min(covered[i], score)
        chosen.append(PortfolioEntry(params=best.params, study=best.study, number=best.origin[2]))
    return chosen


def select_prior(sources: Sequence[SourceStudy], space: Space | FreeSpace) -> list[dict[str, Any]]:
    """The configurations the sampler's prior is made of: each source study's best quarter of completed trials
    (at most MAX_PRIOR_PER_STUDY), fitted to the new space, each distinct configuration once."""
    seen: set[str] = set()
    prior: list[dict[str, Any]] = []
    for source in sources:
        trials = [t for t in source.trials if math.isfinite(t.value)]
        trials.sort(key=lambda t: (t.value if source.direction == "minimize" else -t.value, t.number))
        for trial in trials[: min(MAX_PRIOR_PER_STUDY, math.ceil(PRIOR_SHARE * len(trials)))]:
            params = fit_to_space(space, trial.params)
            key = json.dumps(params, sort_keys=True)
            if params is not None and key not in seen:
                seen.add(key)
                prior.append(params)
    return prior


def stored_prior(storage: BaseStorage, record: StudyRecord) -> list[dict[str, Any]]:
    """The configurations of the study's sampler prior; empty without warm start or with prior_weight 0."""
    if record.spec.warm_start is None or record.spec.warm_start.prior_weight <= 0:
        return []
    stored = storage.get_study_system_attrs(record.optuna_study_id).get(WARM_START_PRIOR_ATTR)
    return [dict(p) for p in stored if isinstance(p, dict)] if isinstance(stored, list) else []


@functools.cache
def builtin_portfolio() -> dict[str, Any]:
    """The recorded studies `builtin` learns from, and what they were: model, fine-tune mode, objective."""
    loaded: dict[str, Any] = json.loads(BUILTIN_PORTFOLIO_FILE.read_text(encoding="utf-8"))
    return loaded


def builtin_sources(spec: StudySpec) -> list[SourceStudy]:
    """The recorded studies as sources for the spec; WarmStartRejected unless it is a study they can teach: a
    head on the built-in model, one objective of the same metric and direction."""
    recorded = builtin_portfolio()
    kind, model, modes = _model_of(spec)
    objective = _objective_of(spec)
    wanted = (recorded["kind"], recorded["model"], (recorded["finetune"],))
    if (kind, model, modes) != wanted or objective != (recorded["metric"], recorded["direction"]):
        raise WarmStartRejected(
            [
                (
                    None,
                    f"builtin learns from tunefleet's recorded studies of a {recorded['finetune']} on"
                    f" {recorded['model']} ({recorded['kind']}) that {recorded['direction']} {recorded['metric']};"
                    f" this study is kind {kind}, model {model or '(none)'}, fine-tune mode {', '.join(modes)},"
                    f" objective {' '.join(objective) if objective else 'of several metrics'}",
                )
            ]
        )
    return [
        SourceStudy(
            f"builtin:{study['task']}",
            recorded["direction"],
            [SourceTrial(number, params, float(value)) for number, params, value in study["trials"]],
        )
        for study in recorded["studies"]
    ]


def _model_of(spec: StudySpec) -> tuple[str, str, tuple[str, ...]]:
    # Kind python has no model but its training function: that is what its configurations were tuned for.
    model = (spec.task.entrypoint or "") if spec.task.kind == "python" else spec.task.model
    return spec.task.kind, model, tuple(sorted(spec.finetune_modes()))


def _objective_of(spec: StudySpec) -> tuple[str, str] | None:
    if spec.objective.several:
        return None
    return spec.objective.names[0], spec.objective.directions[0]


class WarmStartQueue(TrialQueue):
    """Study creation that queues a portfolio of earlier studies' best configurations before any claim."""

    def create(
        self, spec: StudySpec, *, state: StudyState = StudyState.RUNNING, state_reason: str | None = None
    ) -> StudyRecord:
        """Create the study; with warm_start, queue its portfolio first (WarmStartRejected, before anything is
        made, when a named study cannot be learnt from)."""
        if spec.warm_start is None:
            return super().create(spec, state=state, state_reason=state_reason)
        sources, warnings = self._warm_start_sources(spec)
        portfolio = select_portfolio(sources, spec.space, spec.warm_start.portfolio)
        if sources and not portfolio:
            warnings.append("warm start: no completed trial of the source studies fits this study's space")
        # Created stopped, so no worker claims a sampled trial before the portfolio is queued.
        record = super().create(spec, state=StudyState.STOPPED, state_reason=_HOLD_REASON)
        try:
            fits = portfolio[: record.n_trials]
            if len(fits) < len(portfolio):
                warnings.append(
                    f"warm start: the budget of {record.n_trials} trials holds {len(fits)} of the"
                    f" {len(portfolio)} configurations chosen"
                )
            numbers: list[int] = []
            if fits:
                attrs = [{WARM_START_FROM_ATTR: entry.origin} for entry in fits]
                numbers = self.enqueue(spec.name, [entry.params for entry in fits], attrs).numbers
            prior = select_prior(sources, spec.space) if spec.warm_start.prior_weight > 0 else []
            if prior:
                self.storage.set_study_system_attr(record.optuna_study_id, WARM_START_PRIOR_ATTR, prior)
            report = WarmStartReport(
                sources=[source.name for source in sources],
                trials=[
                    {"number": number, "from": entry.origin, "params": entry.params}
                    for number, entry in zip(numbers, fits, strict=True)
                ],
                warnings=warnings,
                prior_configurations=len(prior),
            )
            self.storage.set_study_user_attr(record.optuna_study_id, WARM_START_STUDY_ATTR, report.to_json())
        finally:
            self.set_state(spec.name, state, state_reason)
        return self.get(spec.name)

    def warm_start_report(self, record: StudyRecord) -> WarmStartReport | None:
        """What warm start queued for the study, from where; None for a study without warm_start."""
        if record.spec.warm_start is None:
            return None
        stored = self.storage.get_study_user_attrs(record.optuna_study_id).get(WARM_START_STUDY_ATTR)
        return WarmStartReport.from_json(stored) if isinstance(stored, dict) else None

    def _warm_start_sources(self, spec: StudySpec) -> tuple[list[SourceStudy], list[str]]:
        assert spec.warm_start is not None
        wanted = _objective_of(spec)
        warnings: list[str] = []
        if spec.warm_start.studies == BUILTIN_SOURCES:
            return builtin_sources(spec), warnings
        if spec.warm_start.studies == SAME_MODEL:
            records = self._same_model_studies(spec)
            if not records:
                kind, model, modes = _model_of(spec)
                warnings.append(
                    f"warm start: no completed study has kind {kind}, model {model or '(none)'}, fine-tune"
                    f" mode {', '.join(modes)} and objective {' '.join(wanted or ())}; nothing was queued"
                )
        else:
            records = self._named_studies(spec.warm_start.studies, wanted)
        sources: list[SourceStudy] = []
        for record in records:
            trials = self.storage.get_all_trials(
                record.optuna_study_id, deepcopy=False, states=(TrialState.COMPLETE,)
            )
            completed = [
                SourceTrial(t.number, t.params, float(t.values[0])) for t in trials if t.values is not None
            ]
            if not completed:
                warnings.append(f"warm start: study {record.name!r} has no completed trials")
            sources.append(SourceStudy(record.name, record.spec.objective.directions[0], completed))
        return sources, warnings

    def _named_studies(self, names: Sequence[str], wanted: tuple[str, str] | None) -> list[StudyRecord]:
        records = {record.name: record for record in self.list_studies() if record.name in names}
        problems: list[tuple[int | None, str]] = []
        for index, name in enumerate(names):
            record = records.get(name)
            if record is None:
                problems.append((index, f"no study named {name!r}"))
                continue
            objective = _objective_of(record.spec)
            if objective is None:
                problems.append(
                    (index, f"study {name!r} has several objectives; warm start learns from studies of one")
                )
            elif objective != wanted:
                assert wanted is not None
                problems.append(
                    (
                        index,
                        f"study {name!r} {objective[1]}s {objective[0]}, and this study {wanted[1]}s {wanted[0]}:"
                        " their values do not compare",
                    )
                )
        if problems:
            raise WarmStartRejected(problems)
        return [records[name] for name in names]

    def _same_model_studies(self, spec: StudySpec) -> list[StudyRecord]:
        model, objective = _model_of(spec), _objective_of(spec)
        found: list[StudyRecord] = []
        for record in self.list_studies():  # newest first
            if record.name == spec.name or _model_of(record.spec) != model:
                continue
            if _objective_of(record.spec) != objective:
                continue
            if self._derived_state(record, self.trial_counts(record)) != StudyState.COMPLETED:
                continue
            found.append(record)
            if len(found) == MAX_SAME_MODEL_STUDIES:
                break
        return found
