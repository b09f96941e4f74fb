"""POST /v1/studies/{name}/trials: known configurations queued in the budget and claimed first, on both backends."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from studies import InvalidStudyState, StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies.tables import studies_table, utcnow
from tests.conftest import tiny_spec

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
# Every parameter of tiny_spec's space, each inside its range (width and activation apply with depth 1).
FULL_SET: dict[str, Any] = {
    "learning_rate": 0.0123,
    "batch_size": 64,
    "epochs": 2,
    "depth": 1,
    "width": 17,
    "activation": "tanh",
    "optimizer": "adamw",
}


def python_space_spec(name: str, **overrides: Any) -> dict[str, Any]:
    """A kind python study whose space has every kind of parameter: ranges, a log range, a step, choices,
    a fixed value, and parameters drawn only under a condition."""
    spec: dict[str, Any] = {
        "name": name,
        "task": {"kind": "python", "entrypoint": "tests.entrypoints.training:params_seen"},
        "space": {
            "learning_rate": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "layers": {"type": "int", "low": 1, "high": 4},
            "units": {"type": "int", "low": 16, "high": 256, "step": 16},
            "optimizer": ["adam", "sgd"],
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
            "nesterov": {"type": "categorical", "choices": ["yes", "no"], "when": {"momentum": {"ge": 0.8}}},
            "epochs": 3,
            "batch_size": [16, 32],
        },
        "sampler": {"name": "random", "seed": 3},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 5},
    }
    spec.update(overrides)
    return spec


def enqueue(client: TestClient, name: str, *param_sets: dict[str, Any]) -> Any:
    return client.post(f"/v1/studies/{name}/trials", json={"trials": [{"params": p} for p in param_sets]})


def claim_all(repository: StudyRepository, name: str) -> list[Any]:
    """Claim and complete the study's trials until no claim is left; the claims in order."""
    claims = []
    while (claim := repository.claim(WORKER, study_names=[name])) is not None:
        repository.complete(claim, 1.0, {})
        claims.append(claim)
    return claims


def test_an_enqueued_set_is_the_first_trial_claimed_with_exactly_its_parameters(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    assert client.post("/v1/studies", json=tiny_spec(study_name, budget={"n_trials": 4})).status_code == 201
    response = enqueue(client, study_name, FULL_SET)
    assert response.status_code == 201, response.text
    assert response.json() == {"study_name": study_name, "numbers": [0], "slots_left": 3}

    queued = client.get(f"/v1/studies/{study_name}/trials/0").json()
    assert queued["state"] == "waiting" and queued["user_attrs"] == {"enqueued": True}

    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None and claim.trial.number == 0
    assert claim.params == FULL_SET
    assert {k: type(v) for k, v in claim.params.items()} == {k: type(v) for k, v in FULL_SET.items()}
    repository.complete(claim, 0.5, {})
    ran = client.get(f"/v1/studies/{study_name}/trials/0").json()
    assert ran["params"] == FULL_SET and ran["user_attrs"]["enqueued"] is True
    assert ran["user_attrs"]["seed"] == claim.seed

    sampled = repository.claim(WORKER, study_names=[study_name])
    assert sampled is not None and sampled.trial.number == 1
    assert "enqueued" not in client.get(f"/v1/studies/{study_name}/trials/1").json()["user_attrs"]


def test_the_sampler_draws_the_parameters_a_set_leaves_out(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    assert enqueue(client, study_name, {"learning_rate": 0.004, "depth": 2}, {}).status_code == 201
    first, second = (repository.claim(WORKER, study_names=[study_name]) for _ in range(2))
    assert first is not None and second is not None
    assert first.params["learning_rate"] == 0.004 and first.params["depth"] == 2
    # depth 2 has hidden layers: width and activation are drawn too, as are the rest, each in its range.
    assert set(first.params) == set(FULL_SET)
    assert 8 <= first.params["width"] <= 64 and first.params["batch_size"] in (16, 32, 64, 128)
    assert 1 <= first.params["epochs"] <= 3 and first.params["optimizer"] in ("adam", "adamw", "sgd")
    # An empty set is a trial whose every parameter is drawn, claimed in its turn.
    assert second.trial.number == 1 and {"learning_rate", "batch_size", "depth"} <= set(second.params)


def test_enqueued_trials_take_slots_of_the_budget_and_run_before_new_ones(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name, budget={"n_trials": 5}))
    running = repository.claim(WORKER, study_names=[study_name])
    assert running is not None and running.trial.number == 0
    sets = [{**FULL_SET, "learning_rate": rate} for rate in (0.001, 0.002, 0.003)]
    response = enqueue(client, study_name, *sets)
    assert response.status_code == 201, response.text
    assert response.json()["numbers"] == [1, 2, 3] and response.json()["slots_left"] == 1

    claims = claim_all(repository, study_name)
    repository.complete(running, 1.0, {})
    # Enqueue 3 into a budget of 5: the 3, in order, then one sampled trial; 5 trials ever.
    assert [c.trial.number for c in claims] == [1, 2, 3, 4]
    assert [c.params["learning_rate"] for c in claims[:3]] == [0.001, 0.002, 0.003]
    study = client.get(f"/v1/studies/{study_name}").json()
    assert study["state"] == "completed" and sum(study["trial_counts"].values()) == 5


def test_enqueueing_more_than_the_slots_left_is_409_naming_how_many_and_queues_nothing(
    client: TestClient, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name, budget={"n_trials": 3}))
    assert enqueue(client, study_name, {}, {}).status_code == 201
    response = enqueue(client, study_name, {}, {})
    assert response.status_code == 409
    assert response.json() == {
        "detail": f"study {study_name!r} has 1 trial slots left, not 2: its budget is 3 trials, 0 claimed and"
        " 2 queued",
        "code": "budget_exceeded",
    }
    assert client.get(f"/v1/studies/{study_name}/trials").json()["total"] == 2
    assert enqueue(client, study_name, {}).json()["slots_left"] == 0


@pytest.mark.parametrize(
    ("param_sets", "loc", "words"),
    [
        (
            [{"dropout_rate": 0.1}],
            [0, "dropout_rate"],
            "unknown parameter; the space has learning_rate, dropout",
        ),
        ([{"learning_rate": 0.5}], [0, "learning_rate"], "between 0.0001 and 0.1 on a log scale, got 0.5"),
        ([{"learning_rate": 5e-5}], [0, "learning_rate"], "between 0.0001 and 0.1 on a log scale"),
        ([{"layers": 5}], [0, "layers"], "between 1 and 4, got 5"),
        ([{"units": 40}], [0, "units"], "16 plus a multiple of 16, got 40"),
        ([{"dropout": 0.25}], [0, "dropout"], "0.0 plus a multiple of 0.1, got 0.25"),
        ([{"optimizer": "rmsprop"}], [0, "optimizer"], "one of 'adam', 'sgd', got 'rmsprop'"),
        ([{"epochs": 4}], [0, "epochs"], "fixed at 3, got 4"),
        ([{"layers": 2.0}], [0, "layers"], "must be an integer, got 2.0"),
        ([{"layers": "2"}], [0, "layers"], "must be an integer, got '2'"),
        ([{"learning_rate": True}], [0, "learning_rate"], "must be a number, got True"),
        ([{"learning_rate": "1e-3"}], [0, "learning_rate"], "which is text (YAML reads 1e-3 as text"),
        ([{"learning_rate": [0.01]}], [0, "learning_rate"], "must be a number"),
        ([{"optimizer": None}], [0, "optimizer"], "one of 'adam', 'sgd', got None"),
        # A conditional parameter given while its condition does not hold, or while its parent is sampled.
        (
            [{"optimizer": "adam", "momentum": 0.6}],
            [0, "momentum"],
            "drawn only when optimizer is 'sgd', and optimizer is 'adam'",
        ),
        ([{"momentum": 0.6}], [0, "momentum"], "drawn only when optimizer is 'sgd': give optimizer as well"),
        (
            [{"optimizer": "sgd", "momentum": 0.6, "nesterov": "yes"}],
            [0, "nesterov"],
            "drawn only when momentum >= 0.8, and momentum is 0.6",
        ),
        (
            [{"optimizer": "adam", "nesterov": "yes"}],
            [0, "nesterov"],
            "drawn only when momentum >= 0.8, and momentum is not drawn",
        ),
        # The index names the set: the second of two.
        ([{"layers": 2}, {"units": 17}], [1, "units"], "16 plus a multiple of 16"),
    ],
)
def test_a_set_the_space_refuses_is_422_naming_the_set_and_the_parameter(
    client: TestClient,
    study_name: str,
    param_sets: list[dict[str, Any]],
    loc: list[Any],
    words: str,
) -> None:
    assert client.post("/v1/studies", json=python_space_spec(study_name)).status_code == 201
    response = enqueue(client, study_name, *param_sets)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_error"
    index, name = loc
    assert [d["loc"] for d in body["detail"]] == [["body", "trials", index, "params", name]], body
    assert words in body["detail"][0]["msg"], body
    assert client.get(f"/v1/studies/{study_name}/trials").json()["total"] == 0


def test_conditional_and_fixed_parameters_are_taken_when_they_hold(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=python_space_spec(study_name))
    given = {"optimizer": "sgd", "momentum": 0.85, "nesterov": "no", "epochs": 3, "units": 48, "dropout": 0.3}
    response = enqueue(client, study_name, given, {"optimizer": "adam"}, {"optimizer": "sgd"})
    assert response.status_code == 201, response.text
    first, second, third = (repository.claim(WORKER, study_names=[study_name]) for _ in range(3))
    assert first is not None and second is not None and third is not None
    assert {k: first.params[k] for k in given} == given
    assert "momentum" not in second.params and "nesterov" not in second.params
    # momentum was left to the sampler: drawn, since optimizer sgd holds.
    assert 0.5 <= third.params["momentum"] <= 0.9


def test_numbers_are_recorded_as_the_space_types_them(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=python_space_spec(study_name))
    # An integer for a float range records a float; 32.0 for the choice 32 records the choice itself.
    assert enqueue(client, study_name, {"dropout": 0, "batch_size": 32.0}).status_code == 201
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None
    assert claim.params["dropout"] == 0.0 and type(claim.params["dropout"]) is float
    assert claim.params["batch_size"] == 32 and type(claim.params["batch_size"]) is int


def test_a_stopped_study_takes_enqueued_trials_and_runs_them_on_resume(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    client.post(f"/v1/studies/{study_name}/stop")
    assert enqueue(client, study_name, FULL_SET).status_code == 201
    assert repository.claim(WORKER, study_names=[study_name]) is None
    client.post(f"/v1/studies/{study_name}/resume")
    claim = repository.claim(WORKER, study_names=[study_name])
    assert claim is not None and claim.params == FULL_SET


def test_completed_failed_and_grid_studies_refuse_with_409(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name, budget={"n_trials": 1}))
    assert len(claim_all(repository, study_name)) == 1
    completed = enqueue(client, study_name, {})
    assert completed.status_code == 409
    assert completed.json() == {
        "detail": f"study {study_name!r} is completed: its budget of 1 trials is spent",
        "code": "study_finished",
    }

    failing = f"{study_name}-failed"
    client.post("/v1/studies", json=tiny_spec(failing))
    repository.set_state(failing, "failed", "the first 3 trials failed: no data")
    failed = enqueue(client, failing, {})
    assert failed.status_code == 409 and failed.json()["code"] == "study_finished"
    assert "the first 3 trials failed: no data" in failed.json()["detail"]

    grid = f"{study_name}-grid"
    space = {"optimizer": ["adam", "sgd"], "layers": [1, 2]}
    client.post("/v1/studies", json=python_space_spec(grid, space=space, sampler={"name": "grid"}))
    refused = enqueue(client, grid, {"layers": 1})
    assert refused.status_code == 409 and refused.json()["code"] == "grid_study"

    late = f"{study_name}-late"
    client.post("/v1/studies", json=tiny_spec(late, budget={"n_trials": 3, "timeout_s": 3600}))
    with repository.engine.begin() as connection:
        connection.execute(
            studies_table.update()
            .where(studies_table.c.study_name == late)
            .values(deadline_at=utcnow() - timedelta(seconds=1))
        )
    past = enqueue(client, late, {})
    assert past.status_code == 409 and past.json()["code"] == "study_finished"
    assert "past its deadline" in past.json()["detail"]

    missing = enqueue(client, f"{study_name}-missing", {})
    assert missing.status_code == 404 and missing.json()["code"] == "study_not_found"


def test_a_body_of_many_bad_values_gets_the_first_hundred_problems(
    client: TestClient, study_name: str
) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    response = enqueue(client, study_name, *({f"p{i}_{j}": 1 for j in range(50)} for i in range(4)))
    assert response.status_code == 422
    locs = [d["loc"] for d in response.json()["detail"]]
    assert len(locs) == 100 and locs[0] == ["body", "trials", 0, "params", "p0_0"]
    assert locs[-1] == ["body", "trials", 1, "params", "p1_49"]


@pytest.mark.parametrize(
    "body",
    [
        {"trials": []},
        {"params": {"epochs": 1}},
        {"trials": [{"params": {}, "user_attrs": {}}]},
        {"trials": [1]},
    ],
)
def test_a_body_of_another_shape_is_422(client: TestClient, study_name: str, body: Any) -> None:
    client.post("/v1/studies", json=tiny_spec(study_name))
    response = client.post(f"/v1/studies/{study_name}/trials", json=body)
    assert response.status_code == 422 and response.json()["code"] == "validation_error"


def test_racing_enqueues_and_claims_never_overshoot_the_budget(store_url: str, study_name: str) -> None:
    StudyRepository(open_storage(store_url)).create(
        StudySpec.model_validate(tiny_spec(study_name, budget={"n_trials": 10}, sampler={"name": "random"}))
    )
    accepted: list[int] = []
    claimed: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def enqueue_until_full() -> None:
        # One repository per thread, as one per service process: separate pools, real contention.
        repo = StudyRepository(open_storage(store_url))
        try:
            while True:
                try:
                    numbers = repo.enqueue(study_name, [{"depth": 0}, {"depth": 1}]).numbers
                except InvalidStudyState:  # the budget has no room for two more, or is spent
                    return
                with lock:
                    accepted.extend(numbers)
        except BaseException as error:
            errors.append(error)
        finally:
            repo.engine.dispose()

    def claim_until_empty() -> None:
        repo = StudyRepository(open_storage(store_url))
        try:
            while (claim := repo.claim(WORKER, study_names=[study_name])) is not None:
                repo.complete(claim, 1.0, {})
                with lock:
                    claimed.append(claim.trial.number)
        except BaseException as error:
            errors.append(error)
        finally:
            repo.engine.dispose()

    threads = [threading.Thread(target=enqueue_until_full) for _ in range(3)]
    threads += [threading.Thread(target=claim_until_empty) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    repository = StudyRepository(open_storage(store_url))
    try:
        # Whatever the claims took meanwhile, what is left is claimed now: 10 trials ever, every enqueued one run.
        claimed += [c.trial.number for c in claim_all(repository, study_name)]
        total, trials = repository.trials(repository.get(study_name), limit=100)
    finally:
        repository.engine.dispose()
    assert total == 10 and sorted(claimed) == list(range(10))
    assert set(accepted) <= set(claimed)
    assert {t.number for t in trials if t.user_attrs.get("enqueued")} == set(accepted)
