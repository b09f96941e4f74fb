"""The peer optimizers (SMAC3, DEHB, syne-tune) on a replayed task, each through its own ask/tell loop."""

from __future__ import annotations

import math
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.replay import Replay

MIN_EPOCHS = 1


@dataclass
class Trace:
    """One method on one seed, as bench/replay/run.py's Run: after each finished evaluation, the simulated compute
    so far and the best value so far; a finished evaluation at b epochs counts with its value (the lowest loss of
    epochs 1..b), an evaluation its optimizer stopped partway (a pruned trial) counts only its compute."""

    method: str
    seed: int
    budget_s: float
    compute: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    trials: int = 0
    now: float = 0.0
    found: float = math.inf

    @property
    def spent(self) -> bool:
        return self.now >= self.budget_s

    def finish(self, seconds: float, value: float | None) -> None:
        self.now += seconds
        if value is not None:
            self.found = min(self.found, value)
        self.compute.append(self.now)
        self.best.append(self.found)
        self.trials += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "seed": self.seed,
            "trials": self.trials,
            "compute": self.compute,
            "best": [None if math.isinf(b) else b for b in self.best],
        }


def _drawn(replay: Replay, config: dict[str, Any]) -> dict[str, Any]:
    """The configuration as the replay reads it: a parameter whose condition fails is left out (syne-tune has no
    conditional spaces, so it draws them always)."""
    params = {k: v.item() if hasattr(v, "item") else v for k, v in config.items()}
    for name, p in replay.meta["space"].items():
        for parent, rule in (p.get("when") or {}).items():
            value = params.get(parent)
            holds = value is not None and all(
                {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[op]
                for op, bound in rule.items()
                if bound is not None
            )
            if not holds:
                params.pop(name, None)
    return params


def evaluate(replay: Replay, config: dict[str, Any], epochs: int) -> tuple[float | None, float]:
    """Training from scratch for `epochs` epochs: (its value, or None where the loss turned NaN; its CPU seconds)."""
    curve = replay.replay(_drawn(replay, config))
    if curve.fails_after is not None and epochs > curve.fails_after:
        return None, curve.cost(curve.fails_after)
    return curve.value(epochs), curve.cost(epochs)


def configspace(replay: Replay, seed: int) -> Any:
    """The task's space (without epochs, the fidelity) as a ConfigSpace space, with its conditions."""
    from ConfigSpace import Categorical, ConfigurationSpace, Float, InCondition, Integer

    space = {n: p for n, p in replay.meta["space"].items() if n != "epochs"}
    cs = ConfigurationSpace(seed=seed)
    made: dict[str, Any] = {}
    for name, p in space.items():
        if p["type"] == "categorical":
            made[name] = Categorical(name, p["choices"])
        elif p["type"] == "float":
            made[name] = Float(name, (p["low"], p["high"]), log=bool(p.get("log")))
        else:
            made[name] = Integer(name, (p["low"], p["high"]), log=bool(p.get("log")))
    cs.add(list(made.values()))
    for name, p in space.items():
        for parent in p.get("when") or {}:
            # An integer parent's rule as the values that satisfy it: ConfigSpace has no >= condition.
            parent_space = space[parent]
            values = [
                v
                for v in range(parent_space["low"], parent_space["high"] + 1)
                if _drawn(replay, {parent: v, name: 0}).get(name) is not None
            ]
            cs.add(InCondition(made[name], made[parent], values))
    return cs


def smac_hyperband(replay: Replay, seed: int, budget_s: float, workdir: Path) -> Trace:
    """SMAC3's multi-fidelity facade (random forest, Hyperband intensifier, eta 3) at its defaults."""
    from smac import MultiFidelityFacade, Scenario
    from smac.runhistory.dataclasses import TrialValue

    trace = Trace("smac-hyperband", seed, budget_s)
    scenario = Scenario(
        configspace(replay, seed),
        name=f"smac-{seed}",
        output_directory=workdir / "smac",
        deterministic=True,
        # The budget is compute, not a trial count: this many trials is never reached.
        n_trials=100_000,
        min_budget=MIN_EPOCHS,
        max_budget=replay.max_epochs,
        seed=seed,
    )

    def unused(config: Any, seed: int = 0, budget: float = 0.0) -> float:
        raise AssertionError("evaluated through ask and tell")

    smac = MultiFidelityFacade(
        scenario,
        unused,
        intensifier=MultiFidelityFacade.get_intensifier(scenario),
        overwrite=True,
        logging_level=40,
    )
    while not trace.spent:
        info = smac.ask()
        epochs = max(MIN_EPOCHS, round(info.budget))
        value, seconds = evaluate(replay, dict(info.config), epochs)
        smac.tell(info, TrialValue(cost=math.inf if value is None else value, time=seconds))
        trace.finish(seconds, value)
    return trace


def dehb(replay: Replay, seed: int, budget_s: float, workdir: Path) -> Trace:
    """DEHB (differential evolution in Hyperband brackets, eta 3, its default mutation and crossover)."""
    from dehb import DEHB

    trace = Trace("dehb", seed, budget_s)
    cs = configspace(replay, seed)
    optimizer = DEHB(
        cs=cs,
        dimensions=len(list(cs.values())),
        min_fidelity=MIN_EPOCHS,
        max_fidelity=replay.max_epochs,
        n_workers=1,
        seed=seed,
        output_path=str(workdir / "dehb"),
        log_level="ERROR",
    )
    while not trace.spent:
        job = optimizer.ask()
        epochs = max(MIN_EPOCHS, round(job["fidelity"]))
        # ask gives the configuration as a ConfigSpace Configuration already (inactive parameters removed).
        config = dict(job["config"])
        value, seconds = evaluate(replay, config, epochs)
        optimizer.tell(job, {"fitness": math.inf if value is None else value, "cost": seconds})
        trace.finish(seconds, value)
    return trace


def _syne_tune(name: str, scheduler_class: str) -> Callable[[Replay, int, float, Path], Trace]:
    def run(replay: Replay, seed: int, budget_s: float, workdir: Path) -> Trace:
        """syne-tune's scheduler, one worker, driven as its simulator drives it: each trial reports every epoch
        and the scheduler stops it at a rung or at the last epoch (it trains on, so each epoch is paid once)."""
        from syne_tune.backend.trial_status import Trial
        from syne_tune.config_space import choice, lograndint, loguniform, randint, uniform
        from syne_tune.optimizer import baselines
        from syne_tune.optimizer.scheduler import SchedulerDecision

        space: dict[str, Any] = {}
        for n, p in replay.meta["space"].items():
            if n == "epochs":
                continue
            if p["type"] == "categorical":
                space[n] = choice(p["choices"])
            elif p["type"] == "float":
                space[n] = (loguniform if p.get("log") else uniform)(p["low"], p["high"])
            else:
                space[n] = (lograndint if p.get("log") else randint)(p["low"], p["high"])
        scheduler = getattr(baselines, scheduler_class)(
            space,
            metric="val_loss",
            time_attr="epoch",
            max_t=replay.max_epochs,
            grace_period=MIN_EPOCHS,
            do_minimize=True,
            random_seed=seed,
        )
        trace = Trace(name, seed, budget_s)
        trial_id = 0
        while not trace.spent:
            suggestion = scheduler.suggest()
            trial = Trial(trial_id=trial_id, config=suggestion.config, creation_time=datetime.now())
            trial_id += 1
            scheduler.on_trial_add(trial)
            curve = replay.replay(_drawn(replay, suggestion.config))
            seconds, value, epoch = 0.0, math.inf, 0
            finished = False
            while epoch < replay.max_epochs:
                epoch += 1
                if curve.fails_after is not None and epoch > curve.fails_after:
                    scheduler.on_trial_error(trial)
                    break
                seconds += curve.cpu_s[epoch - 1]
                value = min(value, curve.val_loss[epoch - 1])
                decision = scheduler.on_trial_result(trial, {"val_loss": value, "epoch": epoch})
                if epoch == replay.max_epochs:
                    finished = True
                elif decision == SchedulerDecision.STOP:
                    break
            trace.finish(seconds, value if finished else None)
        return trace

    return run


METHODS: dict[str, Callable[[Replay, int, float, Path], Trace]] = {
    "smac-hyperband": smac_hyperband,
    "dehb": dehb,
    "asha": _syne_tune("asha", "ASHA"),
    "bohb": _syne_tune("bohb", "BOHB"),
}


def run(method: str, replay: Replay, seed: int, budget_s: float) -> Trace:
    """One method on one seed, its optimizer's files in a scratch folder."""
    # syne-tune draws from the global generators too (numpy's, and Python's), besides its own seeded one: seeded
    # here, a run gives the same trace in any process and after any other run.
    random.seed(seed)
    np.random.seed(seed)
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="peers-", dir=shm if shm.is_dir() else None) as workdir:
        return METHODS[method](replay, seed, budget_s, Path(workdir))
