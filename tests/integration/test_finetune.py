"""Own data, own model, every fine-tune mode, and the best model taken away: real runner, store and app.

The model is a tiny randomly initialised BERT saved as a local Hugging Face folder (built-in tokenizer
files, no download), so a last-k or full trial takes well under a second on a CPU.
"""

from __future__ import annotations

import dataclasses
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import torch
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from safetensors.torch import load_file

from service import ServiceSettings, create_app
from studies import StudyRepository, StudySpec, open_storage
from studies.artifacts import (
    MODEL_ARTIFACT_ATTR,
    extract_model_archive,
    open_artifact_store,
    write_model_archive,
)
from studies.states import StudyState
from tests.finetune_spec import CPU_WORKER, TOKENIZER_FILES, run_next
from tests.finetune_spec import finetune_spec as spec
from tunefleet.client import ApiError, TunefleetClient
from worker.data import load_split
from worker.epochs import TrainResult
from worker.export import evaluate, export_adapters, export_encoder, load_best_model
from worker.finetune import build_classifier, tokenize_split, train_encoder
from worker.hyperparams import HeadParams
from worker.lora import LoraParams
from worker.model import builtin_model_folder, load_encoder
from worker.runner import TrialRunner
from worker.tasks.interface import Measurable

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[StudyRepository]:
    # SQLite only: what is tested here is the fine-tuning, not the store (the storage suites run both).
    repo = StudyRepository(open_storage(f"sqlite:///{tmp_path / 'store.db'}"))
    yield repo
    repo.engine.dispose()


def runner_for(repository: StudyRepository, tmp_path: Path, *, keep_models: bool = True) -> TrialRunner:
    return TrialRunner(
        repository=repository,
        device=torch.device("cpu"),
        cache_dir=tmp_path / "features",
        artifact_store=open_artifact_store(str(tmp_path / "artifacts")) if keep_models else None,
    )


@pytest.mark.parametrize("finetune", ["last-k", "head", "full", "lora"])
def test_the_best_model_downloads_and_reproduces_the_trials_validation_loss(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    finetune: str,
) -> None:
    repository.create(spec(study_name, tiny_model, data_files, finetune))
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "artifacts"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        client = TunefleetClient("http://testserver")
        client._http = http  # the snippet's client, talking to the app in this process

        with pytest.raises(ApiError) as nothing_yet:
            client.download_best_model(study_name, tmp_path / "early")
        assert (nothing_yet.value.status, nothing_yet.value.code) == (404, "best_model_not_found")

        runner = runner_for(repository, tmp_path)
        outcome, trial = run_next(runner, repository, study_name)
        assert outcome == "complete", trial.user_attrs.get("fail_reason")
        assert sorted(trial.intermediate_values) == [1, 2]
        assert trial.user_attrs[MODEL_ARTIFACT_ATTR]

        # What README's "Taking the best model away" says, line by line.
        folder = client.download_best_model(study_name, tmp_path / "best-model")
        model = load_best_model(folder)
        val_loss, val_accuracy = evaluate(model)

    assert folder.name == f"{study_name}-trial-{trial.number}-model"
    assert val_loss == pytest.approx(trial.value, abs=1e-5)
    assert val_accuracy == pytest.approx(trial.user_attrs["val_accuracy"])
    assert model.labels == ["negative", "neutral", "positive"]
    assert model.params["number"] == trial.number and model.params["seed"] == trial.user_attrs["seed"]
    assert model.params["params"] == trial.params
    assert model.config["finetune"] == finetune and model.config["head"]["depth"] == 1
    assert len(model.predict(["this great thing is lovely"])) == 1
    saved = {
        name.split(".")[0] + "." + name.split(".")[1] for name in load_file(folder / "weights.safetensors")
    }
    expected_encoder = {
        "head": set(),
        "last-k": {"encoder.encoder"},  # only the top block: encoder.encoder.layer.1.*
        "full": {"encoder.embeddings", "encoder.encoder", "encoder.pooler"},
        "lora": {
            "adapter.base_model"
        },  # peft's names: adapter.base_model.model.encoder.layer.0.*.lora_A.weight
    }[finetune]
    assert saved == {"head.0", "head.2"} | expected_encoder
    if finetune == "last-k":
        assert all(
            ".layer.1." in name for name in load_file(folder / "weights.safetensors") if "layer" in name
        )
    base_files = ["config.json", "labels.json", "params.json", "weights.safetensors"]
    if finetune != "lora":
        assert sorted(p.name for p in folder.iterdir()) == base_files
        return
    # The unpacked download is a peft adapter folder too: peft's own loader takes it as it is.
    from peft import PeftModel
    from transformers import AutoModel

    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*base_files, "adapter_config.json", "adapter_model.safetensors"]
    )
    base = AutoModel.from_pretrained(tiny_model, local_files_only=True)
    with_peft = dataclasses.replace(model, encoder=PeftModel.from_pretrained(base, str(folder)).eval())
    assert evaluate(with_peft)[0] == pytest.approx(trial.value, abs=1e-5)
    texts = ["this great thing is lovely", "this awful thing is dreadful"]
    torch.testing.assert_close(with_peft.logits(texts), model.logits(texts), rtol=0, atol=1e-5)

    # Those two names are all an archive carries beyond its four: no other is written, nor unpacked.
    with pytest.raises(ValueError, match=r"a model archive cannot carry '\.\./escape\.py'"):
        write_model_archive(
            tmp_path / "crafted.zip",
            weights=b"",
            params={},
            labels=[],
            config={},
            extra={"../escape.py": b""},
        )
    crafted = tmp_path / "crafted" / "model.zip"
    crafted.parent.mkdir()
    shutil.copy(folder.with_name(folder.name + ".zip"), crafted)
    with zipfile.ZipFile(crafted, "a") as archive:
        archive.writestr("../escape.py", b"")
        archive.writestr("notes.txt", b"")
    unpacked = extract_model_archive(crafted, tmp_path / "crafted" / "model")
    assert sorted(p.name for p in unpacked.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert sorted(p.name for p in crafted.parent.iterdir()) == ["model", "model.zip"]


def test_only_a_trial_that_beats_the_best_saves_its_model(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    repository.create(
        spec(
            study_name,
            tiny_model,
            data_files,
            "head",
            space={"learning_rate": {"type": "categorical", "choices": [0.03, 1e-6]}, "epochs": 1},
            sampler={"name": "grid", "seed": 1},
        )
    )
    runner = runner_for(repository, tmp_path)
    trials = [run_next(runner, repository, study_name)[1] for _ in range(2)]
    best, worse = sorted(trials, key=lambda t: t.value)
    assert MODEL_ARTIFACT_ATTR in best.user_attrs
    # The first trial always saves (nothing to beat); the second saves only if it is better.
    assert (MODEL_ARTIFACT_ATTR in worse.user_attrs) == (worse.number < best.number)


def test_rerunning_a_trials_parameters_with_its_seed_gives_the_same_validation_loss(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    for finetune in ("head", "last-k", "lora"):
        name = f"{study_name}-{finetune}"
        repository.create(spec(name, tiny_model, data_files, finetune))
        _, first = run_next(runner_for(repository, tmp_path, keep_models=False), repository, name)
        study = optuna.load_study(study_name=name, storage=repository.storage)
        study.enqueue_trial(first.params, user_attrs={"seed": first.user_attrs["seed"]})
        # A fresh runner: nothing carried over in memory but the pristine encoder.
        _, rerun = run_next(runner_for(repository, tmp_path, keep_models=False), repository, name)
        assert rerun.number != first.number
        assert rerun.params == first.params and rerun.user_attrs["seed"] == first.user_attrs["seed"]
        assert rerun.intermediate_values == first.intermediate_values, finetune


def test_trials_in_one_process_never_see_each_others_encoder_updates(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    repository.create(spec(study_name, tiny_model, data_files, "full", budget={"n_trials": 3}))
    runner = runner_for(repository, tmp_path, keep_models=False)
    first = run_next(runner, repository, study_name)[1]
    run_next(runner, repository, study_name)
    study = optuna.load_study(study_name=study_name, storage=repository.storage)
    study.enqueue_trial(first.params, user_attrs={"seed": first.user_attrs["seed"]})
    third = run_next(runner, repository, study_name)[1]
    assert third.intermediate_values == first.intermediate_values


def test_k_larger_than_the_model_fails_the_trial_with_a_clear_reason(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    body = spec(study_name, tiny_model, data_files, "last-k").model_dump(mode="json")
    body["task"]["k"] = 5
    repository.create(StudySpec.model_validate(body))
    outcome, trial = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "fail"
    assert trial.user_attrs["fail_reason"] == "finetune last-k with k=5, but the model has 2 blocks"


@pytest.mark.parametrize("damage", ["weights", "config"])
def test_a_broken_model_folder_fails_the_trial_with_a_clear_reason(
    repository: StudyRepository,
    tiny_model: Path,
    data_files: dict[str, str],
    tmp_path: Path,
    study_name: str,
    damage: str,
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    if damage == "weights":
        (broken / "model.safetensors").write_bytes(b"not a safetensors file")
        expected = f"cannot load the model in {broken}"
    else:
        (broken / "config.json").unlink()
        expected = f"model folder {broken} has no config.json"
    repository.create(spec(study_name, broken, data_files, "last-k"))
    outcome, trial = run_next(runner_for(repository, tmp_path), repository, study_name)
    assert outcome == "fail"
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(expected)


def test_the_best_model_route_says_404_with_a_code(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    settings = ServiceSettings(
        database_url="unused://", artifact_dir=str(tmp_path / "a"), mount_dashboard=False
    )
    with TestClient(create_app(settings, repository=repository)) as http:
        missing = http.get("/v1/studies/no-such-study/best-model")
        assert missing.status_code == 404 and missing.json()["code"] == "study_not_found"
        repository.create(spec(study_name, tiny_model, data_files, "head"))
        empty = http.get(f"/v1/studies/{study_name}/best-model")
        assert empty.status_code == 404
        assert empty.json() == {
            "detail": f"study {study_name!r} has no best model: it has no completed trial yet",
            "code": "best_model_not_found",
        }
        # A trial completed by a worker that keeps no models: the study has a best trial but no model.
        run_next(runner_for(repository, tmp_path, keep_models=False), repository, study_name)
        unsaved = http.get(f"/v1/studies/{study_name}/best-model")
        assert unsaved.status_code == 404 and "saved no model" in unsaved.json()["detail"]


def test_lora_trials_train_fresh_adapters_around_the_pristine_encoders_own_weights(
    tiny_model: Path, data_files: dict[str, str]
) -> None:
    task = spec("lora", tiny_model, data_files, "lora").task
    encoder = load_encoder(tiny_model)
    tokens = tokenize_split(encoder, load_split(task), max_length=task.max_length)
    head = HeadParams.of(
        {"learning_rate": 0.01, "batch_size": 8, "epochs": 2, "depth": 1, "width": 16, "activation": "relu"}
        | {"optimizer": "adam"}
    )
    lora = LoraParams(rank=4, alpha=2.0, dropout=0.1, targets="attention+ffn")
    pristine = dict(encoder.model.named_parameters())
    before = {name: parameter.detach().clone() for name, parameter in pristine.items()}

    classifier, _ = build_classifier(encoder, n_classes=3, params=head, finetune="lora", k=None, lora=lora)
    adapted = {
        name: module for name, module in classifier.encoder.named_modules() if hasattr(module, "lora_A")
    }
    # Two blocks, each with query, key, value, attention output, intermediate and output layers.
    assert len(adapted) == 12
    query = adapted["base_model.model.encoder.layer.0.attention.self.query"]
    assert query.base_layer.weight is pristine["encoder.layer.0.attention.self.query.weight"]
    assert isinstance(encoder.model.encoder.layer[0].attention.self.query, torch.nn.Linear)

    runs = [
        train_encoder(
            encoder=encoder,
            tokens=tokens,
            params=head,
            finetune="lora",
            k=None,
            encoder_learning_rate=0.01,
            seed=seed,
            device=torch.device("cpu"),
            lora=lora,
        )
        for seed in (1, 1, 2)
    ]
    assert runs[0].epochs == runs[1].epochs != runs[2].epochs
    for name, parameter in encoder.model.named_parameters():
        assert torch.equal(parameter, before[name]), name
    adapters = {name for name in runs[0].best_state if name.startswith("adapter.")}
    assert len(adapters) == 24 and all(".lora_A." in name or ".lora_B." in name for name in adapters)


def test_a_models_encoder_exports_as_a_plain_folder_lora_adapters_merged_in(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    kept = {}
    for finetune in ("lora", "last-k"):
        name = f"{study_name}-{finetune}"
        repository.create(spec(name, tiny_model, data_files, finetune, budget={"n_trials": 1}))
        outcome, trial = run_next(runner_for(repository, tmp_path), repository, name)
        assert outcome == "complete", trial.user_attrs.get("fail_reason")
        # The archive as the artifact store keeps it: load_best_model and the exports read the zip too.
        kept[finetune] = tmp_path / "artifacts" / trial.user_attrs[MODEL_ARTIFACT_ATTR]

    merged = export_encoder(kept["lora"], tmp_path / "merged")
    # A folder tunefleet loads as any other encoder: the adapters are in its weights now.
    plain = load_encoder(merged)
    assert not any("lora" in name for name, _ in plain.model.named_parameters())
    model = load_best_model(kept["lora"])
    batch = model.tokenizer(
        ["this great thing is lovely", "a dreadful carpet"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        expected = model.encoder(**batch).last_hidden_state
        got = plain.model(**batch).last_hidden_state
        untrained = load_encoder(tiny_model).model(**batch).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(
        expected, untrained, atol=1e-4
    )  # the adapters trained: there was something to merge
    with pytest.raises(ValueError, match="is a finetune last-k model: only finetune lora has adapters"):
        export_adapters(kept["last-k"], tmp_path / "adapters")
    # Any mode's encoder exports: last-k's with its fine-tuned top block.
    top_block = load_encoder(export_encoder(kept["last-k"], tmp_path / "last-k")).model.encoder.layer[1]
    assert torch.equal(
        top_block.output.dense.weight,
        load_best_model(kept["last-k"]).encoder.encoder.layer[1].output.dense.weight,
    )
    assert not torch.equal(
        top_block.output.dense.weight, load_encoder(tiny_model).model.encoder.layer[1].output.dense.weight
    )


def test_a_lora_trials_latency_times_the_merged_model_it_serves_leaving_the_encoder_pristine(
    repository: StudyRepository, tiny_model: Path, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    objective = {
        "metrics": [
            {"name": "val_loss", "direction": "minimize"},
            {"name": "latency_ms", "direction": "minimize"},
        ],
        "latency_batch_size": 2,
    }
    study = spec(study_name, tiny_model, data_files, "lora", budget={"n_trials": 1}, objective=objective)
    repository.create(study)
    runner = runner_for(repository, tmp_path)
    outcome, trial = run_next(runner, repository, study_name)
    assert outcome == "complete", trial.user_attrs.get("fail_reason")
    assert trial.user_attrs["latency_ms"] > 0
    archive = tmp_path / "artifacts" / trial.user_attrs[MODEL_ARTIFACT_ATTR]

    kind = runner.task_kind(study.task)
    assert isinstance(kind, Measurable)
    cached = load_encoder(tiny_model).model
    before = {name: tensor.clone() for name, tensor in cached.state_dict().items()}
    # timed_model reads the archive; the trial's result is not needed again.
    result = TrainResult(
        epochs=[],
        best_epoch=0,
        best_val_loss=0.0,
        final_val_loss=0.0,
        best_val_accuracy=0.0,
        final_val_accuracy=0.0,
        best_state={},
        train_s=0.0,
    )
    timed = kind.timed_model(
        study.task, trial.params, result, archive, batch_size=2, device=torch.device("cpu")
    )

    # What the latency timed is the plain encoder a user serves: no peft wrapper, no lora layers.
    peft_modules = [
        name for name, module in timed.module.named_modules() if type(module).__module__.startswith("peft")
    ]
    assert peft_modules == []
    assert not any("lora" in name for name, _ in timed.module.named_parameters())
    with torch.no_grad():
        merged = timed.module(*timed.inputs)
        unmerged = load_best_model(archive).classifier(*timed.inputs)
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    # Merging changed a copy: the encoder later trials of this process start from is as it was.
    assert load_encoder(tiny_model).model is cached
    for name, tensor in cached.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert not any("lora" in name for name, _ in cached.named_modules())


def test_a_lora_study_on_a_model_without_layers_it_knows_fails_naming_the_layers_there_are(
    repository: StudyRepository, data_files: dict[str, str], tmp_path: Path, study_name: str
) -> None:
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    for name in TOKENIZER_FILES:
        shutil.copy(builtin_model_folder("all-MiniLM-L6-v2") / name, folder / name)
    config = GPT2Config(
        vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    GPT2Model(config).save_pretrained(folder)
    repository.create(
        spec(study_name, folder, data_files, "lora", budget={"n_trials": 3, "max_consecutive_failures": 2})
    )
    runner = runner_for(repository, tmp_path)
    ended = [run_next(runner, repository, study_name) for _ in range(2)]

    assert [outcome for outcome, _ in ended] == ["fail", "fail"]
    reason = ended[0][1].user_attrs["fail_reason"]
    assert reason == (
        "finetune lora (lora_targets attention): GPT2Model has no attention layer lora can adapt (it looks for"
        " names such as attention.self.query or self_attn.o_proj); the model's layers are wte, wpe,"
        " h.N.attn.c_attn, h.N.attn.c_proj, h.N.mlp.c_fc, h.N.mlp.c_proj (N: each block's number); use finetune"
        " last-k or full for this model"
    )
    record = repository.get(study_name)
    assert record.state == StudyState.FAILED
    assert record.state_reason == f"the first 2 trials failed: {reason}"
    assert repository.claim(CPU_WORKER, study_names=[study_name]) is None
