"""Warm start through POST /v1/studies: earlier studies' best configurations queued first, on both backends."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient

from studies import StudyRepository, WorkerIdentity

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")


def synthetic_spec(name: str, model: str, **overrides: Any) -> dict[str, Any]:
    """A synthetic study on a small space; `model` keeps same-model to this test's studies in a shared store."""
    spec: dict[str, Any] = {
        "name": name,
        "task": {"kind": "synthetic", "model": model},
        "space": {
            "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "batch_size": [16, 32],
            "epochs": 1,
            "depth": {"type": "int", "low": 0, "high": 2},
            "width": {"type": "int", "low": 8, "high": 64},
            "optimizer": ["adam", "sgd"],
        },
        "sampler": {"name": "random", "seed": 5},
        "pruner": {"name": "none"},
    }
    spec.update(overrides)
    return spec


def params(lr: float, depth: int = 1) -> dict[str, Any]:
    width = {"width": 16, "activation": "relu"} if depth else {}
    return {"learning_rate": lr, "batch_size": 32, "depth": depth, **width, "optimizer": "adam"}


def run_source(
    client: TestClient,
    repository: StudyRepository,
    name: str,
    model: str,
    runs: Sequence[tuple[dict[str, Any], float]],
    **overrides: Any,
) -> None:
    """A completed study whose trials ran these configurations and scored these values, in order."""
    spec = synthetic_spec(name, model, budget={"n_trials": len(runs)}, **overrides)
    assert client.post("/v1/studies", json=spec).status_code == 201
    response = client.post(f"/v1/studies/{name}/trials", json={"trials": [{"params": p} for p, _ in runs]})
    assert response.status_code == 201, response.text
    for _, value in runs:
        claim = repository.claim(WORKER, study_names=[name])
        assert claim is not None
        repository.complete(claim, value, {})
    assert client.get(f"/v1/studies/{name}").json()["state"] == "completed"


def claimed_params(repository: StudyRepository, name: str, n: int) -> list[dict[str, Any]]:
    claims = [repository.claim(WORKER, study_names=[name]) for _ in range(n)]
    assert all(claim is not None for claim in claims)
    return [claim.params for claim in claims if claim is not None]


def test_a_new_study_claims_the_portfolio_of_its_sources_first_within_its_budget(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    model = f"org/{study_name}"
    a, b, new = f"{study_name}-a", f"{study_name}-b", f"{study_name}-new"
    # On a, 0.002 is best and 0.001 second (0.43 of a's spread); on b, 0.02 is best and 0.03 second (0.5).
    run_source(
        client, repository, a, model, [(params(0.001), 0.5), (params(0.002), 0.2), (params(0.003, 0), 0.9)]
    )
    run_source(
        client, repository, b, model, [(params(0.01), 3.0), (params(0.02), 1.0), (params(0.03, 0), 2.0)]
    )

    spec = synthetic_spec(new, model, budget={"n_trials": 4}, warm_start={"studies": [a, b], "portfolio": 3})
    response = client.post("/v1/studies", json=spec)
    assert response.status_code == 201, response.text
    created = response.json()
    portfolio = [params(0.002), params(0.02), params(0.001)]
    assert created["spec"]["warm_start"] == {"studies": [a, b], "portfolio": 3, "prior_weight": 1.0}
    assert created["state"] == "running" and created["state_reason"] is None
    assert created["warm_start"] == {
        "sources": [a, b],
        "trials": [
            {"number": 0, "from": f"{a}#1", "params": portfolio[0]},
            {"number": 1, "from": f"{b}#1", "params": portfolio[1]},
            {"number": 2, "from": f"{a}#0", "params": portfolio[2]},
        ],
        "warnings": [],
        # The best quarter of each source's three trials: one each.
        "prior_configurations": 2,
    }
    assert created["trial_counts"]["waiting"] == 3 and created["warnings"] == []

    # Queued in the budget of 4: one slot is left for enqueueing, and the sampler's one trial comes last.
    extra = client.post(f"/v1/studies/{new}/trials", json={"trials": [{"params": {}}, {"params": {}}]})
    assert extra.status_code == 409 and extra.json()["code"] == "budget_exceeded"
    first = claimed_params(repository, new, 4)
    assert [{**p, "epochs": 1} for p in portfolio] == first[:3]
    assert repository.claim(WORKER, study_names=[new]) is None

    trials = client.get(f"/v1/studies/{new}/trials").json()["items"]
    assert [t["user_attrs"].get("warm_start_from") for t in trials] == [f"{a}#1", f"{b}#1", f"{a}#0", None]
    assert [t["user_attrs"].get("enqueued") for t in trials] == [True, True, True, None]
    shown = client.get(f"/v1/studies/{new}").json()
    assert shown["warm_start"] == created["warm_start"] and shown["n_claimed"] == 4


def test_a_budget_smaller_than_the_portfolio_queues_only_what_fits(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    model = f"org/{study_name}"
    source, new = f"{study_name}-a", f"{study_name}-new"
    run_source(client, repository, source, model, [(params(0.001 * (i + 1)), float(i)) for i in range(4)])
    spec = synthetic_spec(new, model, budget={"n_trials": 2}, warm_start={"studies": [source]})
    created = client.post("/v1/studies", json=spec).json()
    assert [t["from"] for t in created["warm_start"]["trials"]] == [f"{source}#0", f"{source}#1"]
    assert created["warm_start"]["warnings"] == [
        "warm start: the budget of 2 trials holds 2 of the 4 configurations chosen"
    ]
    assert claimed_params(repository, new, 2)[1]["learning_rate"] == 0.002
    assert repository.claim(WORKER, study_names=[new]) is None


def test_same_model_learns_only_from_completed_studies_of_the_same_model_mode_and_objective(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    model = f"org/{study_name}"
    names = {k: f"{study_name}-{k}" for k in ("match", "other-model", "other-mode", "accuracy", "running")}
    run_source(client, repository, names["match"], model, [(params(0.004), 1.0)])
    run_source(client, repository, names["other-model"], model + "-x", [(params(0.005), 0.5)])
    run_source(
        client,
        repository,
        names["other-mode"],
        model,
        [(params(0.006), 0.5)],
        task={"kind": "synthetic", "model": model, "finetune": "full"},
    )
    run_source(
        client,
        repository,
        names["accuracy"],
        model,
        [(params(0.007), 0.9)],
        objective={"metric": "val_accuracy"},
    )
    # Still running: a trial of its budget is left.
    assert client.post("/v1/studies", json=synthetic_spec(names["running"], model)).status_code == 201

    new = f"{study_name}-new"
    spec = synthetic_spec(new, model, warm_start={"studies": "same-model"})
    created = client.post("/v1/studies", json=spec).json()
    assert created["warm_start"]["sources"] == [names["match"]]
    assert [t["from"] for t in created["warm_start"]["trials"]] == [f"{names['match']}#0"]
    assert claimed_params(repository, new, 1)[0]["learning_rate"] == 0.004

    lonely = f"{study_name}-lonely"
    spec = synthetic_spec(lonely, model + "-y", warm_start={"studies": "same-model"})
    created = client.post("/v1/studies", json=spec).json()
    assert created["warm_start"]["sources"] == [] and created["warm_start"]["trials"] == []
    assert created["trial_counts"]["waiting"] == 0
    assert any("no completed study has kind synthetic" in w for w in created["warnings"]), created["warnings"]


def test_a_named_study_that_cannot_be_learnt_from_is_a_422_naming_it_and_nothing_is_created(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    model = f"org/{study_name}"
    good, accuracy, several = (f"{study_name}-{k}" for k in ("good", "accuracy", "several"))
    run_source(client, repository, good, model, [(params(0.004), 1.0)])
    run_source(
        client, repository, accuracy, model, [(params(0.004), 0.9)], objective={"metric": "val_accuracy"}
    )
    both = [{"name": "val_loss", "direction": "minimize"}, {"name": "train_seconds", "direction": "minimize"}]
    spec = synthetic_spec(several, model, objective={"metrics": both}, sampler={"name": "nsga2"})
    assert client.post("/v1/studies", json=spec).status_code == 201

    new = f"{study_name}-new"
    missing = f"{study_name}-missing"
    spec = synthetic_spec(new, model, warm_start={"studies": [good, missing, accuracy, several]})
    response = client.post("/v1/studies", json=spec)
    assert response.status_code == 422, response.text
    detail = {tuple(e["loc"]): e["msg"] for e in response.json()["detail"]}
    assert list(detail) == [("body", "warm_start", "studies", i) for i in (1, 2, 3)]
    assert "no study named" in detail[("body", "warm_start", "studies", 1)]
    assert "maximizes val_accuracy" in detail[("body", "warm_start", "studies", 2)]
    assert "several objectives" in detail[("body", "warm_start", "studies", 3)]
    assert client.get(f"/v1/studies/{new}").status_code == 404


def test_a_tpe_study_starts_near_its_sources_good_configurations_after_the_portfolio(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    model = f"org/{study_name}"
    source, new, plain = f"{study_name}-src", f"{study_name}-new", f"{study_name}-plain"
    # The source's best quarter: a learning rate near 3e-2 with sgd; the rest spread over the range.
    runs = [(params(3e-2 * (1 + 0.01 * i)) | {"optimizer": "sgd"}, 0.1 + 0.01 * i) for i in range(4)]
    runs += [(params(10 ** (-4 + 0.25 * i)), 1.0 + i) for i in range(12)]
    run_source(client, repository, source, model, runs)

    def created(name: str, warm_start: dict[str, Any] | None) -> dict[str, Any]:
        spec = synthetic_spec(
            name, model, sampler={"name": "tpe", "seed": 1}, budget={"n_trials": 11}, warm_start=warm_start
        )
        if warm_start is None:
            del spec["warm_start"]
        response = client.post("/v1/studies", json=spec)
        assert response.status_code == 201, response.text
        return response.json()

    # A strong prior: nearly every start is drawn near it (at the default weight, about half are).
    body = created(new, {"studies": [source], "portfolio": 1, "prior_weight": 20})
    assert body["warm_start"]["prior_configurations"] == 4
    created(plain, None)

    def start_gaps(name: str) -> list[float]:
        # The portfolio's one trial first, then the sampler's start (TPE's first 10 trials).
        drawn = claimed_params(repository, name, 11)
        return [abs(math.log10(p["learning_rate"]) - math.log10(3e-2)) for p in drawn[1:]]

    warm, cold = start_gaps(new), start_gaps(plain)
    # Most starts within half a decade of the prior's learning rate; uniform draws over three decades are not.
    assert sorted(warm)[5] < 0.5 < sorted(cold)[5]


def builtin_head_spec(name: str, **overrides: Any) -> dict[str, Any]:
    return {
        "name": name,
        "task": {"model": "builtin:all-MiniLM-L6-v2", "data": "builtin:bbc-news", "finetune": "head"},
        "budget": {"n_trials": 20},
        **overrides,
    }


def test_a_first_study_of_the_builtin_model_starts_from_tunefleets_recorded_studies(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    warm_start = {"studies": "builtin", "prior_weight": 1}
    response = client.post("/v1/studies", json=builtin_head_spec(study_name, warm_start=warm_start))
    assert response.status_code == 201, response.text
    warm = response.json()["warm_start"]
    assert warm["sources"] == [
        "builtin:bbc-news-minilm",
        "builtin:tweets-sentiment-minilm",
        "builtin:rotten-tomatoes-minilm",
    ]
    assert len(warm["trials"]) == 5 and warm["warnings"] == []
    assert {t["from"].split("#")[0] for t in warm["trials"]} == set(warm["sources"])
    assert warm["prior_configurations"] > 20
    # The portfolio runs first, as this study's space takes it.
    first = claimed_params(repository, study_name, 5)
    assert first == [t["params"] for t in warm["trials"]]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (
            {"task": {"model": "builtin:all-MiniLM-L6-v2", "data": "builtin:bbc-news", "finetune": "lora"}},
            "lora",
        ),
        ({"objective": {"metric": "val_accuracy", "direction": "maximize"}}, "val_accuracy"),
    ],
)
def test_builtin_warm_start_is_refused_for_a_study_the_recordings_cannot_teach(
    client: TestClient, study_name: str, overrides: dict[str, Any], words: str
) -> None:
    spec = builtin_head_spec(study_name, warm_start={"studies": "builtin"}, **overrides)
    response = client.post("/v1/studies", json=spec)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "warm_start", "studies"]
    assert words in error["msg"] and "builtin learns from" in error["msg"]
    assert client.get(f"/v1/studies/{study_name}").status_code == 404
