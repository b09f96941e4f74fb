"""A real worker process's log at its default level: the feature cache build and every epoch of every trial."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from studies import StudyRepository, StudySpec, open_storage
from tests.conftest import tiny_spec

pytestmark = pytest.mark.slow


def test_the_worker_logs_the_feature_cache_build_and_each_epoch_at_info(
    study_name: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    spec = tiny_spec(
        study_name,
        space={"epochs": 3, "width": 16},
        budget={"n_trials": 2},
        pruner={"name": "none"},
        objective={"patience": 0},
    )
    repository.create(StudySpec.model_validate(spec))
    repository.engine.dispose()
    env = {name: value for name, value in os.environ.items() if not name.startswith("TUNEFLEET_")}
    env.update(
        TUNEFLEET_DATABASE_URL=url,
        TUNEFLEET_CACHE_DIR=str(tmp_path / "cache"),
        TUNEFLEET_ARTIFACT_DIR=str(tmp_path / "artifacts"),
        TUNEFLEET_POLL_INTERVAL_S="0.2",
    )
    worker = subprocess.run(
        [sys.executable, "-m", "worker", "--study", study_name, "--exit-when-idle"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.returncode == 0, worker.stderr
    log = worker.stderr
    assert re.search(
        r" INFO worker\.features: building the feature cache for 100 texts \(max_length 32, on cpu\)", log
    )
    assert re.search(
        r" INFO worker\.features: feature cache built: 100 texts \(80 train, 20 validation\)", log
    )
    for trial in (0, 1):
        epochs = re.findall(
            rf" INFO worker\.epochs: trial {trial} of {study_name}: epoch (\d)/3 train_loss \d+\.\d+ val_loss"
            r" \d+\.\d+ val_accuracy \d\.\d+ val_macro_f1 \d\.\d+ in \d+\.\d+s",
            log,
        )
        assert epochs == ["1", "2", "3"]
    # The log is lines, not a library's progress bar redrawn in place.
    assert "\r" not in log and "Loading weights" not in log
