"""Kind torch-module: the user's own pretrained module from a file, one layer replaced by the searched head.

Real files in a temporary folder (a module saved whole with torch.save, a TorchScript file, a state_dict with a
factory; numeric CSV columns and hashed text), trials run by the real trial runner on both stores, and one study
run by a real worker process whose best model is downloaded and loaded back.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import FrozenTrial, TrialState
from safetensors.torch import load_file

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, WorkerIdentity, open_storage
from studies.artifacts import MODEL_ARTIFACT_ATTR, WEIGHTS_FILE, extract_model_archive, open_artifact_store
from tests.entrypoints.models import N_COLUMNS, Probabilities, TextClassifier, tabular_classifier
from tests.finetune_spec import write_csv
from tunefleet.client import TunefleetClient
from worker.export import load_best_model
from worker.module_export import evaluate_module, load_best_module
from worker.runner import TrialRunner

ROOT = Path(__file__).resolve().parents[2]
WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
FACTORY = "tests.entrypoints.models:tabular_classifier"
HASHED = {"kind": "hashed-text", "n_features": 64}
COLUMNS = {"kind": "columns"}
LABELS = ["negative", "neutral", "positive"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_columns(path: Path, n_per_label: int, *, extra: str | None = None) -> Path:
    """Four numeric columns whose means give the label away, and optionally a text column beside them."""
    generator = torch.Generator().manual_seed(0)
    header = ["a", "b", "c", "d", *([extra] if extra else []), "label"]
    lines = [",".join(header)]
    for _ in range(n_per_label):
        for index, label in enumerate(LABELS):
            values = (torch.randn(N_COLUMNS, generator=generator) + 2.0 * index).tolist()
            cells = [f"{v:.4f}" for v in values] + (["red"] if extra else []) + [label]
            lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pretrained models in every stored form, a damaged one, and the data they read."""
    folder = tmp_path_factory.mktemp("torch-module")
    torch.manual_seed(0)
    torch.save(TextClassifier(), folder / "pretrained_model.pth")
    torch.jit.script(TextClassifier(n_inputs=N_COLUMNS)).save(str(folder / "scripted.pt"))
    torch.jit.script(Probabilities(n_inputs=N_COLUMNS)).save(str(folder / "probabilities.pt"))
    torch.save(tabular_classifier().state_dict(), folder / "state_dict.pth")
    (folder / "damaged.pth").write_bytes((folder / "pretrained_model.pth").read_bytes()[:400])
    return {
        "whole": folder / "pretrained_model.pth",
        "scripted": folder / "scripted.pt",
        "probabilities": folder / "probabilities.pt",
        "state_dict": folder / "state_dict.pth",
        "damaged": folder / "damaged.pth",
        "missing": folder / "missing.pth",
        "texts": write_csv(folder / "texts.csv", 8),
        "columns": write_columns(folder / "columns.csv", 10),
        "with_text_column": write_columns(folder / "colour.csv", 4, extra="colour"),
    }


def module_spec(
    name: str,
    model: Path,
    data: Path,
    *,
    inputs: dict[str, Any],
    space: dict[str, Any] | None = None,
    n_trials: int = 1,
    **task: Any,
) -> StudySpec:
    """Fixed parameters (2 epochs, batch 8, a 16-wide head of depth 1) unless space says otherwise."""
    return StudySpec.model_validate(
        {
            "name": name,
            "task": {
                "kind": "torch-module",
                "model": str(model),
                "replace": "classifier.1",
                "inputs": inputs,
                "data": {"train": str(data)},
                **task,
            },
            "space": {
                "learning_rate": 0.01,
                "batch_size": 8,
                "epochs": 2,
                "depth": 1,
                "width": 16,
                "activation": "relu",
                "optimizer": "adam",
                **(space or {}),
            },
            "sampler": {"name": "random", "seed": 3},
            "pruner": {"name": "none"},
            "objective": {"patience": 0},
            "budget": {"n_trials": n_trials},
        }
    )


def run_trial(
    repository: StudyRepository,
    tmp_path: Path,
    spec: StudySpec,
    *,
    trust_pickled_models: bool = False,
    allowed_entrypoints: tuple[str, ...] = ("tests.entrypoints",),
) -> tuple[str, FrozenTrial]:
    repository.create(spec)
    claim = repository.claim(WORKER, study_names=[spec.name])
    assert claim is not None
    runner = TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "cache",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        trust_pickled_models=trust_pickled_models,
        allowed_entrypoints=allowed_entrypoints,
    )
    outcome = runner.run(claim)
    return outcome, repository.trial(repository.get(spec.name), claim.trial.number)


def kept_model(tmp_path: Path, trial: FrozenTrial) -> Path:
    """The trial's model archive from the artifact store, unpacked."""
    archive = tmp_path / "model.zip"
    optuna.artifacts.download_artifact(
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")),
        file_path=str(archive),
        artifact_id=trial.user_attrs[MODEL_ARTIFACT_ATTR],
    )
    return extract_model_archive(archive, tmp_path / "model")


def pretrained_state(path: Path) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, weights_only=False) if path.suffix == ".pth" else torch.jit.load(str(path))
    state = loaded if isinstance(loaded, dict) else loaded.state_dict()
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def assert_completed(outcome: str, trial: FrozenTrial) -> None:
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [1, 2]
    assert trial.value is not None and math.isfinite(trial.value)
    assert 0.0 <= trial.user_attrs["val_accuracy"] <= 1.0


def test_a_whole_pickled_module_on_hashed_text_trains_only_its_new_head(
    repository: StudyRepository, files: dict[str, Path], tmp_path: Path, study_name: str
) -> None:
    spec = module_spec(study_name, files["whole"], files["texts"], inputs=HASHED)
    outcome, trial = run_trial(repository, tmp_path, spec, trust_pickled_models=True)

    assert_completed(outcome, trial)
    folder = kept_model(tmp_path, trial)
    saved = load_file(folder / WEIGHTS_FILE)
    before = pretrained_state(files["whole"])
    # The whole model is kept: the pretrained layers exactly as they were, the old layer gone, the head new.
    assert torch.equal(saved["features.0.weight"], before["features.0.weight"])
    assert torch.equal(saved["features.0.bias"], before["features.0.bias"])
    assert "classifier.1.weight" not in saved
    assert saved["classifier.1.0.weight"].shape == (16, 128)
    assert saved["classifier.1.2.weight"].shape == (3, 16)

    model = load_best_module(folder, trust_pickled_models=True)
    val_loss, val_accuracy = evaluate_module(model)
    assert val_loss == pytest.approx(trial.value, abs=1e-5)
    assert val_accuracy == pytest.approx(trial.user_attrs["val_accuracy"])
    assert model.labels == LABELS
    assert model.predict(["this great thing is lovely"])[0] in LABELS
    with pytest.raises(ValueError, match="load_best_module"):
        load_best_model(folder)


def test_with_freeze_none_the_pretrained_layers_train_too(
    repository: StudyRepository, files: dict[str, Path], tmp_path: Path, study_name: str
) -> None:
    spec = module_spec(
        study_name,
        files["state_dict"],
        files["columns"],
        inputs=COLUMNS,
        factory=FACTORY,
        freeze="none",
        space={"encoder_learning_rate": 0.01},
    )
    outcome, trial = run_trial(repository, tmp_path, spec)

    assert_completed(outcome, trial)
    folder = kept_model(tmp_path, trial)
    saved = load_file(folder / WEIGHTS_FILE)
    before = pretrained_state(files["state_dict"])
    assert not torch.equal(saved["features.0.weight"], before["features.0.weight"])
    model = load_best_module(folder, allowed_entrypoints=("tests.entrypoints",))
    assert evaluate_module(model)[0] == pytest.approx(trial.value, abs=1e-5)
    assert model.config["columns"] == ["a", "b", "c", "d"]
    assert model.predict([{"a": 4.0, "b": 4.0, "c": 4.0, "d": 4.0}])[0] in LABELS


def test_a_module_listed_in_freeze_trains_beside_the_head(
    repository: StudyRepository, files: dict[str, Path], tmp_path: Path, study_name: str
) -> None:
    spec = module_spec(study_name, files["scripted"], files["columns"], inputs=COLUMNS, freeze=["features.0"])
    outcome, trial = run_trial(repository, tmp_path, spec)

    assert_completed(outcome, trial)
    saved = load_file(kept_model(tmp_path, trial) / WEIGHTS_FILE)
    before = pretrained_state(files["scripted"])
    assert not torch.equal(saved["model.features.0.weight"], before["features.0.weight"])
    assert saved["head.2.weight"].shape == (3, 16)


@pytest.mark.parametrize("depth", [0, 2])
def test_a_torchscript_model_takes_a_head_of_any_depth_when_the_layer_is_its_output(
    repository: StudyRepository, files: dict[str, Path], tmp_path: Path, study_name: str, depth: int
) -> None:
    spec = module_spec(
        study_name, files["scripted"], files["columns"], inputs=COLUMNS, space={"depth": depth}
    )
    outcome, trial = run_trial(repository, tmp_path, spec)

    assert_completed(outcome, trial)
    folder = kept_model(tmp_path, trial)
    saved = load_file(folder / WEIGHTS_FILE)
    before = pretrained_state(files["scripted"])
    if depth == 0:
        # The compiled layer keeps its type and takes the new weights: 3 classes now, not 5.
        assert saved["classifier.1.weight"].shape == (3, 128)
        assert torch.equal(saved["features.0.weight"], before["features.0.weight"])
    else:
        # The head goes on the model's output; the layer it replaces passes its inputs through.
        assert torch.equal(saved["model.classifier.1.weight"], torch.eye(128))
        assert saved["head.4.weight"].shape == (3, 16)
        assert torch.equal(saved["model.features.0.weight"], before["features.0.weight"])
    assert evaluate_module(load_best_module(folder))[0] == pytest.approx(trial.value, abs=1e-5)


# (model, data, task and space changes, runner changes, what the reason says)
FAILURES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], list[str]]] = {
    "a pickled module without permission": (
        "whole",
        "texts",
        {"inputs": HASHED},
        {},
        [
            "holds a whole pickled module (class tests.entrypoints.models.TextClassifier)",
            "TUNEFLEET_TRUST_PICKLED_MODELS=1",
            "TorchScript",
            "state_dict",
        ],
    ),
    "a replace path the model lacks": (
        "whole",
        "texts",
        {"inputs": HASHED, "replace": "classifier.3"},
        {"trust_pickled_models": True},
        ["replace 'classifier.3' is not in the model", "its submodules: 0, 1", "features.0, features.1"],
    ),
    "a replaced layer that is not Linear": (
        "whole",
        "texts",
        {"inputs": HASHED, "replace": "classifier.0"},
        {"trust_pickled_models": True},
        ["'classifier.0' is a Dropout, not a Linear layer", "classifier.1 (128→5)"],
    ),
    "hashed features the model does not take": (
        "whole",
        "texts",
        {"inputs": {"kind": "hashed-text", "n_features": 32}},
        {"trust_pickled_models": True},
        ["does not take 32 input features (the text hashed into 32 features)", "features.0, takes 64"],
    ),
    "fewer columns than the model takes": (
        "scripted",
        "columns",
        {"inputs": {"kind": "columns", "columns": ["a", "b", "c"]}},
        {},
        ["does not take 3 input features (3 columns: a, b, c)", "takes 4"],
    ),
    "a damaged file": (
        "damaged",
        "texts",
        {"inputs": HASHED},
        {},
        ["damaged.pth", "is not a model torch can read"],
    ),
    "a missing file": (
        "missing",
        "texts",
        {"inputs": HASHED},
        {},
        ["missing.pth", "is missing on worker host"],
    ),
    "a state_dict without a factory": (
        "state_dict",
        "columns",
        {"inputs": COLUMNS},
        {},
        ["holds a state_dict"],
    ),
    "a factory not allowed": (
        "state_dict",
        "columns",
        {"inputs": COLUMNS, "factory": FACTORY},
        {"allowed_entrypoints": ()},
        [f"factory {FACTORY} is not an allowed entry point", "TUNEFLEET_ALLOWED_ENTRYPOINTS=tests"],
    ),
    "a factory that does not import": (
        "state_dict",
        "columns",
        {"inputs": COLUMNS, "factory": "tests.entrypoints.nowhere:build"},
        {},
        ["factory tests.entrypoints.nowhere:build cannot be imported", "No module named"],
    ),
    "a column that is not numeric": (
        "scripted",
        "with_text_column",
        {"inputs": COLUMNS},
        {},
        [
            "column 'colour' of",
            "is not numeric: row 1 is not a number",
            "columns present: 'a', 'b', 'c', 'd', 'colour'",
        ],
    ),
    "a column that is not there": (
        "scripted",
        "columns",
        {"inputs": {"kind": "columns", "columns": ["a", "b", "c", "e"]}},
        {},
        ["has no column 'e' (task.inputs.columns)", "columns present: 'a', 'b', 'c', 'd', 'label'"],
    ),
    "a deeper head inside a compiled model": (
        "probabilities",
        "columns",
        {"inputs": COLUMNS},
        {},
        ["cannot take a head of depth 1 at 'classifier.1'", "space.depth: 0"],
    ),
    "a softmax after the replaced layer": (
        "probabilities",
        "columns",
        {"inputs": COLUMNS, "space": {"depth": 0}},
        {},
        ["output rows are probabilities", "training needs logits"],
    ),
    "a module to train that is not there": (
        "scripted",
        "columns",
        {"inputs": COLUMNS, "freeze": ["encoder"]},
        {},
        ["freeze 'encoder' is not in the model"],
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_a_bad_model_or_input_fails_the_trial_with_its_reason(
    repository: StudyRepository, files: dict[str, Path], tmp_path: Path, study_name: str, case: str
) -> None:
    model, data, task, runner, reason = FAILURES[case]
    spec = module_spec(study_name, files[model], files[data], **task)
    outcome, trial = run_trial(repository, tmp_path, spec, **runner)

    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    for fragment in reason:
        assert fragment in trial.user_attrs["fail_reason"]


@pytest.mark.slow
def test_a_worker_process_runs_a_study_whose_best_model_downloads_and_reloads(
    files: dict[str, Path], tmp_path: Path, study_name: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    repository = StudyRepository(open_storage(url))
    spec = module_spec(
        study_name,
        files["whole"],
        files["texts"],
        inputs=HASHED,
        space={"depth": {"type": "int", "low": 0, "high": 1}, "activation": ["relu", "gelu"]},
        n_trials=2,
    )
    repository.create(spec)
    env = {
        **os.environ,
        "TUNEFLEET_DATABASE_URL": url,
        "TUNEFLEET_TRUST_PICKLED_MODELS": "1",
        "TUNEFLEET_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
        "TUNEFLEET_POLL_INTERVAL_S": "0.2",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    worker = subprocess.run(
        [sys.executable, "-m", "worker", "--study", study_name, "--exit-when-idle", "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr
    trials = repository.storage.get_all_trials(repository.get(study_name).optuna_study_id)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [t.user_attrs for t in trials]
    best = min(trials, key=lambda t: t.value if t.value is not None else math.inf)

    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http  # the client, talking to the app in this process
        folder = client.download_best_model(study_name, tmp_path / "best-model")
    repository.engine.dispose()

    model = load_best_module(folder, trust_pickled_models=True)
    assert model.params["number"] == best.number and model.params["params"] == best.params
    assert evaluate_module(model)[0] == pytest.approx(best.value, abs=1e-5)
    assert model.predict(["this awful thing is dreadful", "this table thing is a window"])[0] in LABELS
