"""/metrics parsed with prometheus_client's own parser, and the HTML report, against a real small study."""

from __future__ import annotations

import html
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import StoreCollector
from studies import StudyRepository, StudySpec, WorkerIdentity
from studies.fleet import Fleet
from tests.conftest import tiny_spec
from tests.sql_statements import statements
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


def plotted_traces(page: str, div_id: str) -> list[dict[str, Any]]:
    """The traces of the page's plotly figure drawn into div_id, as the page hands them to Plotly.newPlot."""
    call = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    assert call is not None, f"no plot drawn into {div_id}"
    traces, _ = json.JSONDecoder().raw_decode(page, call.end())
    assert isinstance(traces, list)
    return traces


def test_the_report_of_a_study_of_several_objectives_draws_its_pareto_front_and_lists_its_trials(
    client: TestClient, repository: StudyRepository, study_name: str, tmp_path: Path
) -> None:
    # The synthetic kind trains nothing: each trial's val_loss follows its epochs, its train_seconds its sleep.
    spec = {
        "name": study_name,
        "task": {"kind": "synthetic"},
        "space": {"epochs": {"type": "int", "low": 1, "high": 3}},
        "objective": {
            "metrics": [
                {"name": "val_loss", "direction": "minimize"},
                {"name": "train_seconds", "direction": "minimize"},
            ]
        },
        "sampler": {"name": "random", "seed": 5},
        "pruner": {"name": "none"},
        "budget": {"n_trials": 4},
    }
    assert client.post("/v1/studies", json=spec).status_code == 201
    runner = TrialRunner(repository=repository, device=torch.device("cpu"), cache_dir=tmp_path)
    for _ in range(4):
        claim = repository.claim(WORKER, study_names=[study_name])
        assert claim is not None
        assert runner.run(claim) == "complete"
    front = client.get(f"/v1/studies/{study_name}/pareto").json()["trials"]
    on_front = sorted(trial["number"] for trial in front)
    assert on_front

    page = client.get(f"/v1/studies/{study_name}/report").text
    assert "<h2>Pareto front</h2>" in page
    assert f"Pareto front: {len(on_front)} trial" in page
    # The front drawn: Optuna's own figure, its front's points each a trial of the API's front.
    traces = plotted_traces(page, "pareto-front-plot")
    best = [t for t in traces if "Best Trial" in t["hovertemplate"]]
    assert len(best) == 1
    drawn = sorted(int(n) for text in best[0]["text"] for n in re.findall(r'"number": (\d+)', text))
    assert drawn == on_front
    assert sum(len(t["x"]) for t in traces) == 4
    # plotly.js once, inlined with the front's plot: the page opens offline.
    assert "<script src=" not in page
    assert page.count("* plotly.js v") == 1
    # The front's table: each trial's number, objective values by name, and parameters.
    table = page[page.index('<table class="pareto-front">') :]
    table = table[: table.index("</table>")]
    assert "<th>val_loss</th><th>train_seconds</th><th>params</th>" in table
    assert sorted(int(n) for n in re.findall(r"<tr><td>#(\d+)</td>", table)) == on_front
    for trial in front:
        row = table[table.index(f"<tr><td>#{trial['number']}</td>") :]
        row = row[: row.index("</tr>")]
        for metric, value in trial["values"].items():
            assert f"<td>{value:.6g}</td>" in row, metric
        assert f"epochs={trial['params']['epochs']}," in row


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


def test_a_scrape_takes_as_many_statements_for_six_studies_as_for_two(
    repository: StudyRepository, study_name: str
) -> None:
    def scrape() -> tuple[list[str], dict[str, float]]:
        collector = StoreCollector(repository, grace_s=60.0, cache_s=0.0)
        with statements(repository.engine) as seen:
            families = list(collector.collect())
        failed = {
            sample.labels["study"]: sample.value
            for family in families
            if family.name == "tunefleet_failed_trials"
            for sample in family.samples
            if sample.labels["study"].startswith(study_name)
        }
        return seen, failed

    def add_study(index: int) -> None:
        name = f"{study_name}-{index}"
        repository.create(StudySpec.model_validate(tiny_spec(name, budget={"n_trials": 4})))
        for number in range(3):
            claim = repository.claim(WORKER, study_names=[name])
            assert claim is not None
            if number == 2:
                repository.fail(claim, "NaN loss at epoch 1")
            else:
                repository.complete(claim, 0.5, {"claim_s": 0.01})

    for index in range(2):
        add_study(index)
    for_two, failed = scrape()
    assert failed == {f"{study_name}-0": 1, f"{study_name}-1": 1}
    for index in range(2, 6):
        add_study(index)
    for_six, failed = scrape()
    assert len(failed) == 6
    assert len(for_six) == len(for_two), for_six
