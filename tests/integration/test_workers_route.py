"""GET /v1/workers lists what README.md says it lists, on a real app and store."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from service.routes.workers import WorkerRead
from studies import StudyRepository, WorkerIdentity
from studies.fleet import Fleet
from tests.conftest import tiny_spec

README = Path(__file__).resolve().parents[2] / "README.md"
STATUSES = {"busy", "idle", "lost", "stopped"}


def readme_paragraph() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("`GET /v1/workers` lists")
    return " ".join(text[start : text.index("```", start)].split())


def test_the_readme_names_every_field_and_status_of_a_listed_worker() -> None:
    paragraph = readme_paragraph()
    named = set(re.findall(r"`([a-z_]+)`", paragraph))
    assert named - STATUSES == set(WorkerRead.model_fields)
    assert named & STATUSES == STATUSES
    assert "`?include_stopped=true`" in paragraph


def test_workers_are_listed_busy_idle_and_lost_and_stopped_ones_only_when_asked(
    client: TestClient, repository: StudyRepository, study_name: str
) -> None:
    fleet = Fleet(repository)
    run = uuid.uuid4().hex[:8]  # the PostgreSQL store is shared: only this test's workers are looked at
    ids = {role: f"test:{n}:{run}" for n, role in enumerate(("idle", "busy", "lost", "stopped"))}
    for role, worker_id in ids.items():
        identity = WorkerIdentity(host="test", pid=1, device="cpu", worker_id=worker_id)
        fleet.register(identity, grace_s=0.001 if role == "lost" else None)
    client.post("/v1/studies", json=tiny_spec(study_name))
    busy = WorkerIdentity(host="test", pid=1, device="cpu", worker_id=ids["busy"])
    claim = repository.claim(busy, study_names=[study_name])
    assert claim is not None
    fleet.deregister(ids["stopped"])
    time.sleep(0.05)  # past the lost worker's grace period

    def listed(query: str = "") -> dict[str, dict[str, object]]:
        response = client.get(f"/v1/workers{query}")
        assert response.status_code == 200, response.text
        return {w["worker_id"]: w for w in response.json() if w["worker_id"] in ids.values()}

    workers = listed()
    assert {w["status"] for w in workers.values()} == {"idle", "busy", "lost"}
    assert ids["stopped"] not in workers
    assert workers[ids["busy"]]["study_name"] == study_name
    assert workers[ids["busy"]]["trial_number"] == claim.trial.number
    assert workers[ids["idle"]]["study_name"] is None and workers[ids["idle"]]["trial_number"] is None
    assert all(set(w) == set(WorkerRead.model_fields) for w in workers.values())

    everyone = listed("?include_stopped=true")
    assert everyone[ids["stopped"]]["status"] == "stopped"
    assert set(everyone) == set(ids.values())
