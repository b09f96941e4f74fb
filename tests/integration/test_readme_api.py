"""README.md's REST API examples (the block of study requests, enqueueing trials, warm start), run with curl as
written against a real service: each request is one the service knows, and answers as the README says."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from service import ServiceSettings, create_app
from studies import StudyRepository, WorkerIdentity, open_storage
from tests.conftest import required_in_ci
from tests.live import serving

README = Path(__file__).resolve().parents[2] / "README.md"
PRESET = Path(__file__).resolve().parents[2] / "studies" / "presets" / "bbc-news-minilm.yaml"
README_ADDRESS = "http://127.0.0.1:8000"
WORKER = WorkerIdentity(host="test", pid=1, device="cpu")


def readme_block(holding: str) -> list[str]:
    """README.md's bash block that holds the text `holding`, line by line as a shell reads it: a command continued
    with a backslash, or over a newline inside quotes, is one line."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [block for block in blocks if holding in block]
    assert len(found) == 1, f"README.md has {len(found)} bash blocks holding {holding!r}"
    lines: list[str] = []
    pending = ""
    for line in found[0].replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quote still open
            continue
        lines.append(pending)
        pending = ""
    assert not pending, f"an unclosed quote in README.md's block holding {holding!r}"
    return lines


def needs(program: str) -> None:
    """The README's commands use curl and jq; `make install` installs them where missing, and CI must have them."""
    if shutil.which(program) is None:
        required_in_ci(
            f"{program} not found: install Debian's {program} package (make install does, as root)"
        )


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, StudyRepository]]:
    """The service on a fresh SQLite store, on a free port: its address, and the store's repository."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    settings = ServiceSettings(database_url=url, api_token=None, api_tokens_file=None, protect_reads=False)
    repository = StudyRepository(open_storage(url))
    with serving(create_app(settings, repository=repository)) as (host, port):
        yield f"http://{host}:{port}", repository
    repository.engine.dispose()


def curl(line: str, address: str, tmp_path: Path) -> tuple[str, int, str]:
    """Run one README line's curl command (comments dropped) against address: the line, the status, the body."""
    args = [arg.replace(README_ADDRESS, address) for arg in shlex.split(line, comments=True)]
    assert args[:2] == ["curl", "-s"], line
    body = tmp_path / "body"
    done = subprocess.run(
        [*args, "-o", str(body), "-w", "%{http_code}"], capture_output=True, text=True, timeout=60, check=True
    )
    return line, int(done.stdout), body.read_text(encoding="utf-8")


def test_the_api_examples_answer_as_the_readme_says(
    service: tuple[str, StudyRepository], tmp_path: Path
) -> None:
    needs("curl")
    address, repository = service
    lines = [line for line in readme_block("# create a study (201") if line.startswith("curl ")]
    created = curl(lines[0], address, tmp_path)
    assert created[1] == 201, created
    # What a worker does before anyone asks for trial 0: claim it and finish it.
    claim = repository.claim(WORKER, study_names=["quick"])
    assert claim is not None
    repository.complete(claim, 0.42, {})
    answers = [curl(line, address, tmp_path) for line in lines[1:]]
    # Each answers 200, but the delete: the study was resumed with trials left, and "409 while it runs".
    assert [status for _, status, _ in answers] == [200] * 6 + [409, 200, 200], answers
    listed, study, complete, trial = (json.loads(body) for _, _, body in answers[:4])
    assert [item["name"] for item in listed["items"]] == ["quick"]
    assert study["spec"]["task"]["max_examples"] == 300 and study["spec"]["budget"]["n_trials"] == 20
    assert [t["number"] for t in complete["items"]] == [0] and trial["value"] == 0.42
    assert json.loads(answers[6][2])["code"] == "invalid_study_state", answers[6]


def test_the_enqueue_example_queues_its_sets_and_answers_what_the_readme_shows(
    service: tuple[str, StudyRepository], tmp_path: Path
) -> None:
    needs("curl")
    address, _ = service
    # The study the README's `tunefleet study create ... --set budget.n_trials=30 --set name=bbc-30` makes.
    spec = {
        **yaml.safe_load(PRESET.read_text(encoding="utf-8")),
        "name": "bbc-30",
        "budget": {"n_trials": 30},
    }
    assert httpx.post(f"{address}/v1/studies", json=spec, timeout=60).status_code == 201
    lines = readme_block("/v1/studies/bbc-30/trials")
    _, status, body = curl(lines[0], address, tmp_path)
    assert status == 201, body
    shown = lines[1].removeprefix("# ")
    assert json.loads(body) == json.loads(shown)


def test_the_warm_start_example_learns_from_the_finished_studies_of_the_same_model(
    service: tuple[str, StudyRepository], tmp_path: Path
) -> None:
    needs("curl")
    needs("jq")
    address, repository = service
    # Two finished studies of the built-in model before it, as the README's bbc-april and bbc-may.
    for name in ("bbc-april", "bbc-may"):
        spec = {"name": name, "sampler": {"name": "random", "seed": len(name)}, "budget": {"n_trials": 4}}
        assert httpx.post(f"{address}/v1/studies", json=spec, timeout=60).status_code == 201
        for number in range(4):
            claim = repository.claim(WORKER, study_names=[name])
            assert claim is not None
            repository.complete(claim, 0.5 + 0.1 * number, {})
    lines = readme_block('"name": "bbc-june"')
    command = lines[0].replace(README_ADDRESS, address)
    assert command.endswith("| jq .warm_start"), command
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
    warm_start = json.loads(done.stdout)
    shown = lines[1].removeprefix("# ") + lines[2].removeprefix("# ")
    # The README elides the trials' params ({...}): compare the keys, the sources and where each trial came from.
    assert set(warm_start) == set(re.findall(r'"(\w+)": ', shown)) - {"number", "from", "params"}
    assert warm_start["sources"] == ["bbc-may", "bbc-april"] and warm_start["warnings"] == []
    assert [t["number"] for t in warm_start["trials"]] == [0, 1, 2]
    assert all(re.fullmatch(r"bbc-(may|april)#[0-3]", t["from"]) for t in warm_start["trials"])
