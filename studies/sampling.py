"""Builds the Optuna sampler and pruner a spec names, identically on every worker, and draws a trial's parameters."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.trial import FrozenTrial

from studies._optuna.cost_aware import CostAwareTPESampler
from studies._optuna.hyperband import HyperbandPruner as OptunaHyperband
from studies._optuna.internals import filter_study, forget_cached_trials, single_value
from studies.space import Condition, grid_combinations
from studies.spec import (
    DEFAULT_COST_WEIGHT,
    DEFAULT_N_STARTUP_TRIALS,
    AshaPruner,
    HyperbandPruner,
    MedianPruner,
    NoPruner,
    PercentilePruner,
    StudySpec,
    SuccessiveHalvingPruner,
)


def derived_seed(base_seed: int, *salt: object) -> int:
    """A 31-bit seed from a base seed and a salt; stable across processes, unlike hash()."""
    digest = hashlib.sha256(repr((base_seed, *salt)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def build_sampler(
    spec: StudySpec, *, claim_index: int, prior: Sequence[Mapping[str, Any]] = ()
) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded by a claim's index so parallel workers never replay the same random stream.

    prior: configurations earlier studies found good (warm start), which steer a single-objective TPE at first.
    """
    # Every worker builds its own sampler; with one shared seed, two workers' first random
    # suggestions would be identical. Seeding by the index of the claim it is built for (claims are
    # numbered once, atomically) gives each worker process its own stream, and one worker's run
    # is reproducible from the spec.
    seed = derived_seed(spec.sampler.seed or 0, "sampler", claim_index)
    startup = spec.sampler.n_startup_trials
    name = spec.sampler.name
    if name == "tpe" and spec.objective.several:
        # The cost-aware TPE weighs one objective; Optuna's own TPE ranks several by non-domination. Its
        # constant liar files running trials with the worst, before it reads any values, as for one objective.
        return optuna.samplers.TPESampler(
            seed=seed,
            constant_liar=True,
            n_startup_trials=DEFAULT_N_STARTUP_TRIALS if startup is None else startup,
        )
    if name == "tpe":
        # The constant liar makes TPE treat running trials as bad results, so workers spread out.
        cost_weight = spec.sampler.cost_weight
        return CostAwareTPESampler(
            seed=seed,
            constant_liar=True,
            # A claim writes every sampled parameter in one transaction right after sampling.
            share_relative_params=False,
            n_startup_trials=DEFAULT_N_STARTUP_TRIALS if startup is None else startup,
            cost_weight=DEFAULT_COST_WEIGHT if cost_weight is None else cost_weight,
            prior=prior,
            prior_weight=spec.warm_start.prior_weight if spec.warm_start is not None else 0.0,
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        # Optuna's GridSampler picks among unvisited points per process, so racing workers can
        # draw the same one. Claims are numbered once, atomically: claim k takes point k of a
        # seeded shuffle of the grid, so no point is ever handed out twice.
        return optuna.samplers.PartialFixedSampler(
            grid_point(spec, claim_index), optuna.samplers.RandomSampler(seed=seed)
        )
    if name == "qmc":
        # QMC draws its points by trial number from one sequence; the study seed (not the claim) fixes it.
        return optuna.samplers.QMCSampler(seed=spec.sampler.seed or 0, scramble=True)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup or 1)
    if name == "gp":
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=DEFAULT_N_STARTUP_TRIALS if startup is None else startup
        )
    if name == "nsga2":
        # Infeasible trials (a constraint's value above 0) rank below feasible ones by constrained domination;
        # Optuna's samplers read the constraint values each trial stores, so no constraints_func is needed.
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=startup or 50)
    raise ValueError(f"unknown sampler {name!r}")


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every point of the spec's grid, in a seeded shuffled order that all workers share.

    A conditional parameter appears only in the points where its condition holds, so a grid over the
    built-in space has one depth-0 point per combination of the other parameters, not one per width too.
    """
    points = grid_combinations(spec.space)
    random.Random(spec.sampler.seed or 0).shuffle(points)
    return points


def grid_point(spec: StudySpec, claim_index: int) -> dict[str, Any]:
    """The grid point claim number `claim_index` runs."""
    points = grid_points(spec)
    return points[claim_index % len(points)]


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; resources are epochs, up to the space's largest epoch count."""
    p = spec.pruner
    if isinstance(p, NoPruner):
        return optuna.pruners.NopPruner()
    if isinstance(p, MedianPruner):
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if isinstance(p, PercentilePruner):
        return optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    if isinstance(p, SuccessiveHalvingPruner):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=_halving_min_resource(p), reduction_factor=p.reduction_factor
        )
    if isinstance(p, HyperbandPruner):
        return OptunaHyperband(
            min_resource=p.min_resource,
            max_resource=_hyperband_max_resource(spec),
            reduction_factor=p.reduction_factor,
        )
    if isinstance(p, AshaPruner):
        # Nothing for Optuna to stop: the worker pauses a trial at a rung and a claim promotes it (studies.promotion).
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {p!r}")


def _halving_min_resource(p: SuccessiveHalvingPruner) -> int | Literal["auto"]:
    return p.min_resource or "auto"


def _hyperband_max_resource(spec: StudySpec) -> int | Literal["auto"]:
    # A kind python space may have no epochs parameter: Optuna then finds the largest step reported.
    return spec.space.max_epochs() or "auto"


def pruner_reads_its_resources(spec: StudySpec) -> bool:
    """Whether the spec's pruner finds a resource from the study's finished trials when it first decides
    (Optuna's "auto", as build_pruner sets it): successive halving without min_resource, Hyperband over a space
    without epochs."""
    p = spec.pruner
    if isinstance(p, SuccessiveHalvingPruner):
        return _halving_min_resource(p) == "auto"
    return isinstance(p, HyperbandPruner) and _hyperband_max_resource(spec) == "auto"


def sample_params(
    study: optuna.Study,
    trial: FrozenTrial,
    space: dict[str, BaseDistribution],
    conditions: Mapping[str, Condition] | None = None,
) -> None:
    """Draw the trial's missing parameters into trial.params, as Trial.suggest_* would, without writing.

    A conditional parameter is drawn only when its condition holds on the parameters drawn before it, as
    an `if` around a suggest call in an objective function would.

    The same order of sources as optuna.Trial._suggest: parameters the trial already has (a trial
    handed back), fixed ones (enqueued), single-valued ones, the sampler's relative sample, then its
    independent sample. The caller writes them all in one transaction instead of one per parameter.
    """
    # The sampler sees the study as Optuna's Trial shows it: under Hyperband, a bracket view whose
    # get_trials keeps the trial's bracket (TPE reads _get_trials: every trial of the study).
    view = filter_study(study, trial)
    forget_cached_trials(study)
    sampler = study.sampler
    sampler.before_trial(view, trial)
    fixed = trial.system_attrs.get("fixed_params", {})
    relative: dict[str, Any] | None = None
    relative_space: dict[str, BaseDistribution] = {}
    for name, distribution in space.items():
        condition = (conditions or {}).get(name)
        if condition is not None and not condition(trial.params):
            continue
        if name in trial.params:
            check_distribution_compatibility(trial.distributions[name], distribution)
            continue
        if name in fixed:
            value = fixed[name]
        elif distribution.single():
            value = single_value(distribution)
        else:
            if relative is None:
                relative_space = sampler.infer_relative_search_space(view, trial)
                relative = sampler.sample_relative(view, trial, relative_space)
            if name in relative and name in relative_space:
                check_distribution_compatibility(relative_space[name], distribution)
                value = relative[name]
            else:
                value = sampler.sample_independent(view, trial, name, distribution)
        # As Trial._suggest: the internal representation validates the value (NaN raises).
        distribution.to_internal_repr(value)
        trial.params[name] = value
        trial.distributions[name] = distribution
