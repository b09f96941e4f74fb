"""The image example (examples/image_classifier.py): a kind python study that fine-tunes an image classifier.

Its plain-PyTorch architecture (small-cnn) runs everywhere; torchvision's run where a torchvision built for the
installed torch is importable (PyPI has only CUDA builds of it, which a CPU-only torch cannot load).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from studies import StudyRepository, StudySpec
from studies.artifacts import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE
from studies.spec import load_spec_file
from tests.finetune_spec import run_next
from tests.integration.test_python_kind import downloaded_model, runner_for
from tunefleet import Trial
from worker.entrypoints import is_allowed
from worker.epochs import EpochResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
SPEC_FILE = ROOT / "examples" / "image-classifier.yaml"
ENTRYPOINT = "examples.image_classifier:train"
# Small enough for a CPU: 40 random 32x32 images (32 to train, 8 to validate), batches of 8.
TINY = {"data": "fake:40", "image_size": 32, "batch_size": 8, "learning_rate": 0.001}


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """examples.image_classifier, which imports torchvision only for torchvision's architectures and image folders."""
    return importlib.import_module("examples.image_classifier")


def needs_torchvision(architecture: str) -> None:
    if architecture != "small-cnn":
        pytest.importorskip("torchvision", reason=f"{architecture} is torchvision's")


ARCHITECTURES = ["small-cnn", "resnet18", "mobilenet_v3_small"]


def example_spec(name: str, **space: Any) -> StudySpec:
    """The example's own spec file, renamed, with a random sampler, no pruner, 2 trials and space overrides."""
    body = load_spec_file(SPEC_FILE)
    body.update(
        name=name, sampler={"name": "random", "seed": 11}, pruner={"name": "none"}, budget={"n_trials": 2}
    )
    body["space"].update(space)
    return StudySpec.model_validate(body)


def test_the_example_spec_is_a_valid_kind_python_study_that_a_worker_allowing_examples_runs() -> None:
    spec = StudySpec.model_validate(load_spec_file(SPEC_FILE))
    assert (spec.task.kind, spec.task.entrypoint) == ("python", ENTRYPOINT)
    assert is_allowed(ENTRYPOINT, ["examples"])
    params = spec.space.params()
    assert params["momentum"].when == {"optimizer": "sgd"}
    assert (params["data"].type, params["weights"].type) == ("fixed", "fixed")
    assert spec.pruner.name == "hyperband" and spec.space.max_epochs() == params["epochs"].value


def test_the_example_reads_every_parameter_of_its_spec(example: ModuleType) -> None:
    names = set(StudySpec.model_validate(load_spec_file(SPEC_FILE)).space.params())
    assert names <= {"data", *example.DEFAULTS}, names - {"data", *example.DEFAULTS}


@pytest.mark.parametrize("architecture", ["small-cnn", "resnet18"])
def test_a_study_fine_tunes_an_image_model_whose_best_model_reloads_and_gives_the_trials_value(
    example: ModuleType, repository: StudyRepository, tmp_path: Path, study_name: str, architecture: str
) -> None:
    needs_torchvision(architecture)
    repository.create(example_spec(study_name, **TINY, architecture=architecture, epochs=2))
    runner = runner_for(repository, tmp_path, allowed=("examples",))
    trials = [run_next(runner, repository, study_name)[1] for _ in range(2)]
    for trial in trials:
        assert trial.state == TrialState.COMPLETE, trial.user_attrs.get("fail_reason")
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.value is not None and math.isfinite(trial.value)
        assert 0.0 <= trial.user_attrs["val_accuracy"] <= 1.0
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")

    best = min(trials, key=lambda t: t.value or math.inf)
    folder = downloaded_model(best, tmp_path)
    data = example.load_data(TINY["data"], TINY["image_size"])
    assert json.loads((folder / LABELS_FILE).read_text()) == data.classes
    config = json.loads((folder / CONFIG_FILE).read_text())["model"]
    assert config == {"architecture": architecture, "num_classes": len(data.classes), "image_size": 32}
    # The download rebuilds into the architecture and gives the trial's value on its validation images.
    model = example.build_model(config["architecture"], config["num_classes"])
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    _, validation = example.loaders(data, batch_size=8, seed=0)
    val_loss, _ = example.evaluate(model, validation, torch.device("cpu"))
    assert val_loss == pytest.approx(best.value, rel=1e-5)

    # The same parameters and seed train the same model: by hand, its epochs come out as the worker's did.
    epochs: list[EpochResult] = []
    example.train(Trial(best.params, seed=best.user_attrs["seed"], on_epoch=epochs.append))
    assert [e.val_loss for e in epochs] == pytest.approx(
        [best.intermediate_values[1], best.intermediate_values[2]]
    )


def first_val_loss(example: ModuleType, params: dict[str, Any], seed: int) -> float:
    """The validation loss of the first epoch the example reports, run by hand with these parameters."""
    epochs: list[EpochResult] = []
    example.train(Trial(params, seed=seed, on_epoch=epochs.append))
    return epochs[0].val_loss


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_pretrained_weights_come_from_a_local_file_into_all_but_the_replaced_last_layer(
    example: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, architecture: str
) -> None:
    needs_torchvision(architecture)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("torchvision tried to download weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    torch.manual_seed(1)
    if architecture == "small-cnn":
        pretrained = example.SmallCNN()
    else:
        import torchvision

        pretrained = getattr(torchvision.models, architecture)(weights=None)
    weights = tmp_path / f"{architecture}.pth"
    torch.save(pretrained.state_dict(), weights)
    head = example.HEADS[architecture]

    torch.manual_seed(2)
    model = example.build_model(architecture, 3, weights)
    loaded = model.state_dict()
    expected = {
        name: value for name, value in pretrained.state_dict().items() if not name.startswith(head + ".")
    }
    assert set(loaded) == {*expected, f"{head}.weight", f"{head}.bias"}
    assert all(torch.equal(loaded[name], value) for name, value in expected.items())
    assert loaded[f"{head}.weight"].shape[0] == 3
    torch.manual_seed(2)
    random = example.build_model(architecture, 3).state_dict()
    assert not all(torch.equal(random[name], value) for name, value in expected.items())

    # Trained from the file, the first epoch differs from the same seed's random initialisation.
    params = {**TINY, "architecture": architecture, "epochs": 1, "optimizer": "adam"}
    from_file = first_val_loss(example, {**params, "weights": str(weights)}, seed=5)
    assert from_file != first_val_loss(example, params, seed=5)

    # A file of another architecture is refused, not half loaded.
    foreign = tmp_path / "foreign.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(5, 7)).state_dict(), foreign)
    with pytest.raises(ValueError, match=f"do not fit {architecture}"):
        example.build_model(architecture, 3, foreign)
