"""/metrics parsed with prometheus_client's own parser, and the HTML report, against a real small study."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.fleet import Fleet
from tests.conftest import tiny_spec
from worker.runner import TrialRunner

WORKER = WorkerIdentity(host="test", pid=1, device="cpu", worker_id="test:1:metrics")


def run_small_study(repository: StudyRepository, name: str, cache_dir: Path) -> None:
    spec = tiny_spec(
        name,
        task={"kind": "synthetic"},
        budget={"n_trials": 4},
        space={"epochs": 2},
        pruner={"name": "none"},
    )
    repository.create(StudySpec.model_validate(spec))
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=cache_dir)
    # A registered worker, as in a fleet: its claims hold their trial in its registry row.
    worker = replace(WORKER, worker_id=f"test:1:{name}")
    Fleet(repository).register(worker)
    for index in range(4):
        claim = repository.claim(worker, study_names=[name])
        assert claim is not None
        if index == 3:
            repository.fail(claim, "NaN loss at epoch 2")
        else:
            assert runner.run(claim) == "complete"


def samples_by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_metrics_match_the_store_after_a_small_study(
    client: TestClient, repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    run_small_study(repository, study_name, tmp_path)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = samples_by_name(response.text)

    def value(name: str, **labels: str) -> float:
        return next(v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items()))

    counts = repository.trial_counts(repository.get(study_name))
    assert value("tunefleet_trials", study=study_name, state="complete") == counts["complete"] == 3
    assert value("tunefleet_trials", study=study_name, state="fail") == counts["fail"] == 1
    assert value("tunefleet_failed_trials", study=study_name, reason="NaN loss at epoch N") == 1
    assert value("tunefleet_trial_duration_seconds_count", study=study_name) == 4
    assert value("tunefleet_claim_latency_seconds_count", study=study_name) == 3
    assert value("tunefleet_claim_latency_seconds_bucket", study=study_name, le="+Inf") == 3
    assert "tunefleet_running_trials" in samples
    assert {lab["status"] for lab, _ in samples["tunefleet_workers"]} == {"busy", "idle", "lost"}


def test_report_is_a_self_contained_page_naming_the_study(
    client: TestClient, repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    run_small_study(repository, study_name, tmp_path)
    response = client.get(f"/v1/studies/{study_name}/report")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert f"Study {study_name}" in page
    for title in ("Optimisation history", "Intermediate values", "Hyperparameter importances", "Parallel"):
        assert title in page
    # plotly.js is inlined, so the file opens without a network.
    assert "<script src=" not in page
    assert page.count("Plotly.newPlot") >= 3


def test_the_report_of_a_failed_study_says_why_it_failed(
    client: TestClient, repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    # A study that cannot work: its data file is not where the workers look. The breaker fails it after
    # its first three trials fail alike.
    missing = tmp_path / "gone" / "train.csv"
    spec = {"name": study_name, "task": {"data": {"train": str(missing)}, "max_length": 32}}
    assert client.post("/v1/studies", json=spec).status_code == 201
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)
    for _ in range(3):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        assert runner.run(claim) == "fail"
    study = client.get(f"/v1/studies/{study_name}").json()
    assert study["state"] == "failed"
    reason = study["state_reason"]
    assert reason.startswith("the first 3 trials failed: ") and str(missing) in reason

    page = client.get(f"/v1/studies/{study_name}/report").text
    assert f"Failed: {html.escape(reason)}</p>" in page


def test_report_of_an_unknown_study_is_404(client: TestClient) -> None:
    assert client.get("/v1/studies/nope/report").status_code == 404
