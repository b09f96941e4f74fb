"""Warm start: the spec section's checks, and the portfolio chosen from earlier studies' completed trials."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from studies.spec import Space, StudySpec
from studies.warm_start import SourceStudy, SourceTrial, fit_to_space, normalised, select_portfolio


def synthetic_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "new",
        "task": {"kind": "synthetic"},
        "space": {
            "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "depth": {"type": "int", "low": 0, "high": 2},
            "width": {"type": "int", "low": 8, "high": 64},
        },
        "sampler": {"name": "tpe", "seed": 1},
    }
    spec.update(overrides)
    return spec


def space(**params: Any) -> Space:
    space = StudySpec.model_validate(synthetic_spec(**({"space": params} if params else {}))).space
    assert isinstance(space, Space)
    return space


def config(lr: float, depth: int = 0, **rest: Any) -> dict[str, Any]:
    return {"learning_rate": lr, "depth": depth, **rest}


def study(
    name: str, *values: float, direction: str = "minimize", lrs: list[float] | None = None
) -> SourceStudy:
    """A source study whose trial i has learning rate lrs[i] (default: 0.001 * (i + 1)) and value values[i]."""
    rates = lrs or [0.001 * (i + 1) for i in range(len(values))]
    trials = [SourceTrial(i, config(rates[i]), v) for i, v in enumerate(values)]
    return SourceStudy(name, direction, trials)  # type: ignore[arg-type]


def origins(portfolio: list[Any]) -> list[str]:
    return [entry.origin for entry in portfolio]


# The spec section


def errors(spec: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        StudySpec.model_validate(spec)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


def test_warm_start_defaults_to_a_portfolio_of_five_and_a_spec_without_it_stores_as_before() -> None:
    spec = StudySpec.model_validate(synthetic_spec(warm_start={"studies": ["old-a", "old-b"]}))
    assert spec.warm_start is not None and spec.warm_start.portfolio == 5
    assert spec.model_dump(mode="json")["warm_start"] == {
        "studies": ["old-a", "old-b"],
        "portfolio": 5,
        "prior_weight": 1.0,
    }
    assert "warm_start" not in StudySpec.model_validate(synthetic_spec()).model_dump(mode="json")
    same = StudySpec.model_validate(synthetic_spec(warm_start={"studies": "same-model", "portfolio": 50}))
    assert same.warm_start is not None and same.warm_start.studies == "same-model"


@pytest.mark.parametrize(
    ("warm_start", "loc", "words"),
    [
        ({"studies": ["a"], "portfolio": 0}, ("warm_start", "portfolio"), "greater than or equal to 1"),
        ({"studies": ["a"], "portfolio": 51}, ("warm_start", "portfolio"), "less than or equal to 50"),
        ({"studies": "every"}, ("warm_start", "studies"), "list of study names, same-model or builtin"),
        ({"studies": []}, ("warm_start", "studies", "names"), "at least 1 item"),
        ({"studies": ["ok", "Bad name!"]}, ("warm_start", "studies", "names", 1), "pattern"),
        ({"studies": ["a", "a"]}, ("warm_start", "studies"), "'a' twice"),
        ({"portfolio": 3}, ("warm_start", "studies"), "Field required"),
        ({"studies": ["a"], "size": 3}, ("warm_start", "size"), "Extra inputs"),
        (
            {"studies": ["a"], "prior_weight": -1},
            ("warm_start", "prior_weight"),
            "greater than or equal to 0",
        ),
    ],
)
def test_a_bad_warm_start_section_is_refused_naming_its_field(
    warm_start: dict[str, Any], loc: tuple[Any, ...], words: str
) -> None:
    found = errors(synthetic_spec(warm_start=warm_start))
    assert any(where == loc and words in msg for where, msg in found), found


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"warm_start": {"studies": ["new"]}}, "warm_start.studies: a study cannot start from itself"),
        (
            {
                "sampler": {"name": "grid"},
                "space": {"learning_rate": [0.01, 0.1], "batch_size": 32, "epochs": 1, "depth": 0},
                "warm_start": {"studies": ["a"]},
            },
            "warm_start: the grid sampler",
        ),
        (
            {
                "objective": {
                    "metrics": [
                        {"name": "val_loss", "direction": "minimize"},
                        {"name": "train_seconds", "direction": "minimize"},
                    ]
                },
                "sampler": {"name": "nsga2"},
                "warm_start": {"studies": ["a"]},
            },
            "warm_start: a study of several objectives",
        ),
    ],
)
def test_warm_start_refuses_what_it_cannot_serve(overrides: dict[str, Any], words: str) -> None:
    assert any(words in msg for _, msg in errors(synthetic_spec(**overrides)))


# The portfolio


def test_values_are_normalised_within_their_study_best_first_whichever_the_direction() -> None:
    assert normalised([2.0, 1.0, 3.0], "minimize") == [0.5, 0.0, 1.0]
    assert normalised([0.5, 0.9, 0.7], "maximize") == pytest.approx([1.0, 0.0, 0.5])
    assert normalised([0.4, 0.4], "minimize") == [0.0, 0.0]


def test_one_source_gives_its_best_distinct_configurations_best_first() -> None:
    # Trials 1 and 3 are the same configuration: it is chosen once, as the better of the two (trial 3).
    source = study("old", 0.9, 0.5, 0.1, 0.05, 0.7, lrs=[0.001, 0.002, 0.003, 0.002, 0.005])
    portfolio = select_portfolio([source], space(), 3)
    assert origins(portfolio) == ["old#3", "old#2", "old#4"]
    assert [entry.params for entry in portfolio] == [config(0.002), config(0.003), config(0.005)]


def test_one_source_maximised_puts_its_largest_values_first() -> None:
    portfolio = select_portfolio([study("acc", 0.6, 0.9, 0.8, direction="maximize")], space(), 2)
    assert origins(portfolio) == ["acc#1", "acc#2"]


def test_two_sources_are_both_covered_before_either_gets_its_second_best() -> None:
    # The studies' values are on different scales: by raw value b's three would all come before a's best.
    a = study("a", 10.0, 11.0, 12.0, 50.0, lrs=[0.001, 0.002, 0.003, 0.004])
    b = study("b", 0.30, 0.35, 0.31, lrs=[0.01, 0.02, 0.03])
    portfolio = select_portfolio([a, b], space(), 4)
    # Then the next best relative to its own study: a's 11 (0.025 of its spread) before b's 0.31 (0.2).
    assert origins(portfolio) == ["a#0", "b#0", "a#1", "a#2"]


def test_a_configuration_both_studies_ran_counts_on_both() -> None:
    # lr 0.05 is second best on a and on b: one pick covers both almost as well as their two bests.
    a = study("a", 1.0, 1.1, 2.0, lrs=[0.001, 0.05, 0.002])
    b = study("b", 1.0, 1.1, 2.0, lrs=[0.01, 0.05, 0.02])
    assert origins(select_portfolio([a, b], space(), 1)) == ["a#1"]


def test_ties_go_to_the_earlier_study_then_the_lower_trial_number_and_the_choice_repeats() -> None:
    a = study("a", 1.0, 1.0, lrs=[0.001, 0.002])
    b = study("b", 5.0, 5.0, lrs=[0.003, 0.004])
    first = select_portfolio([a, b], space(), 4)
    assert origins(first) == ["a#0", "b#0", "a#1", "b#1"]
    assert select_portfolio([a, b], space(), 4) == first


def test_numeric_values_outside_the_new_space_are_clipped_into_it_and_a_missing_choice_drops_the_configuration() -> (
    None
):
    new = space(
        learning_rate={"type": "float", "low": 0.01, "high": 0.05, "step": 0.01},
        depth={"type": "int", "low": 1, "high": 2},
        optimizer=["adam", "sgd"],
    )
    assert fit_to_space(new, {"learning_rate": 0.5, "depth": 0, "optimizer": "sgd"}) == {
        "learning_rate": 0.05,
        "depth": 1,
        "optimizer": "sgd",
    }
    # Onto the step grid; an int range takes a whole number.
    assert fit_to_space(new, {"learning_rate": 0.023, "depth": 2.0}) == {"learning_rate": 0.02, "depth": 2}
    assert fit_to_space(new, {"learning_rate": 0.02, "optimizer": "adamw"}) is None
    # A parameter the space does not search is left out; the space's fixed values are its own.
    assert fit_to_space(space(batch_size=32), {"learning_rate": 0.01, "batch_size": 64, "nope": 1}) == {
        "learning_rate": 0.01
    }
    # Nothing left to fix is no configuration.
    assert fit_to_space(new, {"nope": 1}) is None

    source = SourceStudy(
        "old",
        "minimize",
        [SourceTrial(0, {"learning_rate": 0.2, "optimizer": "adamw"}, 0.1), SourceTrial(1, config(0.2), 0.5)],
    )
    portfolio = select_portfolio([source], new, 5)
    assert [(entry.origin, entry.params) for entry in portfolio] == [
        ("old#1", {"learning_rate": 0.05, "depth": 1})
    ]


def test_conditional_parameters_are_kept_only_where_their_condition_holds() -> None:
    new = space()  # width is drawn only with depth >= 1
    assert fit_to_space(new, {"learning_rate": 0.01, "depth": 1, "width": 100}) == {
        "learning_rate": 0.01,
        "depth": 1,
        "width": 64,
    }
    assert fit_to_space(new, {"learning_rate": 0.01, "depth": 0, "width": 32}) == {
        "learning_rate": 0.01,
        "depth": 0,
    }
    # Without the depth it depends on, width is left to the sampler rather than refused at the queue.
    assert fit_to_space(new, {"learning_rate": 0.01, "width": 32}) == {"learning_rate": 0.01}
    # A source depth the new space clips to 1 brings its width along.
    deeper = space(depth={"type": "int", "low": 0, "high": 1}, width={"type": "int", "low": 8, "high": 64})
    assert fit_to_space(deeper, {"learning_rate": 0.01, "depth": 3, "width": 16}) == {
        "learning_rate": 0.01,
        "depth": 1,
        "width": 16,
    }


def test_trials_without_a_finite_value_are_left_out() -> None:
    source = SourceStudy(
        "old", "minimize", [SourceTrial(0, config(0.001), float("nan")), SourceTrial(1, config(0.002), 1.0)]
    )
    assert origins(select_portfolio([source], space(), 5)) == ["old#1"]
