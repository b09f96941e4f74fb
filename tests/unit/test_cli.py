"""The CLI: errors are one readable line and exit code 2; a worker process settles its start-up heap."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_spec
from tunefleet.cli import main


def test_missing_spec_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["study", "create", str(tmp_path / "nope.yaml"), "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunefleet: error: no such spec file")
    assert len(err.splitlines()) == 1


def test_unreachable_service_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the tunefleet service" in err
    assert len(err.splitlines()) == 1


def test_malformed_yaml_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["study", "create", str(bad), "--url", "http://127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.startswith("tunefleet: error:")


def test_unknown_subcommand_exits_2() -> None:
    result = subprocess.run([sys.executable, "-m", "tunefleet", "bogus"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_a_worker_keeps_its_start_up_objects_out_of_garbage_collection(tmp_path: Path) -> None:
    # Without the freeze, each full collection in a worker walks ~250k import-time objects again
    # (120-150 ms on 2 cores), stalling whatever claim or report it lands in.
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_LOG_LEVEL": "DEBUG",
    }
    result = subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--exit-when-idle"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frozen = re.search(r"(\d+) start-up objects kept out of garbage collection", result.stderr)
    assert frozen is not None, result.stderr
    assert int(frozen.group(1)) > 50_000


def _warm(tmp_path: Path, spec: dict[str, object]) -> subprocess.CompletedProcess[str]:
    from studies import StudyRepository, StudySpec, open_storage

    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    repository.create(StudySpec.model_validate(spec))
    repository.engine.dispose()
    env = {**os.environ, "TUNEFLEET_DATABASE_URL": url, "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", "worker", "--warm-cache", "--study", str(spec["name"])],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_warm_cache_builds_a_head_studys_features_once(tmp_path: Path) -> None:
    result = _warm(tmp_path, tiny_spec("warm-head"))
    assert result.returncode == 0, result.stderr
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_warm_cache_leaves_a_last_k_study_alone(tmp_path: Path) -> None:
    # last-k and full studies run the encoder in every trial: features built here would never be read.
    result = _warm(
        tmp_path, tiny_spec("warm-last-k", task={"max_examples": 100, "finetune": "last-k", "k": 1})
    )
    assert result.returncode == 0, result.stderr
    assert "nothing to warm" in result.stdout
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
