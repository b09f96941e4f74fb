"""The text-classification task kind: a Hugging Face encoder and a searched head (head, last-k, full or lora)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from studies.spec import MAX_LATENCY_BATCH_SIZE, Task
from worker.data import LabelledSplit, data_memo_key, load_split
from worker.data_report import DataReport, note_on
from worker.data_roots import confine_task
from worker.device import all_cores
from worker.epochs import TrainResult
from worker.export import load_best_model, model_config, serialise_weights
from worker.features import Features, load_or_build_features
from worker.finetune import Tokens, tokenize_split, train_encoder
from worker.hyperparams import HeadParams
from worker.lora import LoraParams, adapter_config, adapter_files
from worker.model import load_encoder, model_folder
from worker.tasks.interface import ModelFiles, Progress, TaskHost, TimedModel, TrialContext
from worker.training import train_head

# Tokenized data sets kept per process (each is a list of token-id tensors: a few MB per 10k texts).
_MAX_TOKEN_SETS = 4


class TextClassification:
    """The built-in task kind; keeps each data set's features (head) or token ids (last-k, full) per process.

    Local data files and model folders are read only inside the worker's data roots.
    """

    def __init__(self, host: TaskHost) -> None:
        self.host = host
        self.roots = host.data_roots
        self._features: dict[tuple[Any, ...], Features] = {}
        self._tokens: dict[tuple[Any, ...], Tokens] = {}
        # What loading each data set found, by the same keys: every trial on it records it.
        self._reports: dict[tuple[Any, ...], DataReport] = {}
        # The first validation texts of each data set: what a trial's model is timed on.
        self._latency_texts: dict[tuple[Any, ...], list[str]] = {}

    def _key(self, task: Task) -> tuple[Any, ...]:
        # Every path is checked before the memo key looks at any file's size and time.
        confine_task(task, self.roots)
        return data_memo_key(task)

    def _split(self, task: Task, key: tuple[Any, ...]) -> LabelledSplit:
        split = load_split(task, self.roots)
        self._reports[key] = split.report
        return split

    def features(
        self, task: Task, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> Features:
        """The task's encoder features: from this process's memo, else the node's disk cache, else computed."""
        key = self._key(task)
        if key not in self._features:
            # Encoding is one big batch job, unlike head training: give it every core while it runs.
            with all_cores():
                self._features[key] = load_or_build_features(
                    encoder_folder=model_folder(task, self.roots),
                    split=self._split(task, key),
                    max_length=task.max_length,
                    cache_dir=self.host.cache_dir,
                    progress=progress,
                    device=self.host.device,
                    interrupt=interrupt,
                )
        return self._features[key]

    def tokens(self, task: Task) -> Tokens:
        """The task's token ids for last-k, full and lora: tokenized once per process and data set."""
        key = self._key(task)
        if key not in self._tokens:
            encoder = load_encoder(model_folder(task, self.roots))
            split = self._split(task, key)
            while len(self._tokens) >= _MAX_TOKEN_SETS:
                self._tokens.pop(next(iter(self._tokens)))
            self._tokens[key] = tokenize_split(encoder, split, max_length=task.max_length)
        return self._tokens[key]

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Features for a head study (the node's cache), token ids for last-k, full and lora."""
        if task.finetune == "head":
            self.features(task, progress=progress, interrupt=interrupt)
        else:
            load_encoder(model_folder(task, self.roots))
            self.tokens(task)

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        """Train a fresh head on the features, or the head and the encoder on the token ids."""
        params = HeadParams.of(trial.params)
        run_name = f"trial {trial.number} of {trial.study_name}"
        if task.finetune == "head":
            features = self.features(task)
            note_on(trial, self._reports.get(data_memo_key(task), DataReport()))
            return train_head(
                features=features,
                params=params,
                seed=trial.seed,
                device=trial.device,
                on_epoch=trial.report,
                interrupted=trial.stop_reason,
                keep=trial.keep,
                run_name=run_name,
                checkpoints=trial.checkpoints,
            )
        encoder = load_encoder(model_folder(task, self.roots))
        tokens = self.tokens(task)
        note_on(trial, self._reports.get(data_memo_key(task), DataReport()))
        encoder_learning_rate = trial.params.get("encoder_learning_rate")
        # Training through the encoder is big matrix work, unlike a small head: use every core.
        with all_cores():
            return train_encoder(
                encoder=encoder,
                tokens=tokens,
                params=params,
                finetune=task.finetune,
                k=task.k,
                encoder_learning_rate=float(encoder_learning_rate) if encoder_learning_rate else None,
                seed=trial.seed,
                device=trial.device,
                lora=LoraParams.of(trial.params) if task.finetune == "lora" else None,
                on_epoch=trial.report,
                interrupted=trial.stop_reason,
                keep=trial.keep,
                run_name=run_name,
                checkpoints=trial.checkpoints,
            )

    def label_names(self, task: Task) -> list[str]:
        """The label names of a task whose data this process has already loaded."""
        if task.finetune == "head":
            return list(self.features(task).label_names)
        return list(self.tokens(task).label_names)

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        """The kept weights as safetensors, the label names, and the config that rebuilds the model; for finetune
        lora also peft's own adapter files, which PeftModel.from_pretrained loads from the unpacked download."""
        labels = self.label_names(task)
        adapters = None
        if task.finetune == "lora":
            # Resolved again on the pristine encoder: the same layers the trial adapted.
            encoder = load_encoder(model_folder(task, self.roots))
            adapters = adapter_config(encoder.model, LoraParams.of(params))
        config = model_config(task, params, result.best_state, n_classes=len(labels), adapter_config=adapters)
        weights = serialise_weights(result.best_state, finetune=task.finetune)
        extra = adapter_files(result.best_state, adapters) if adapters is not None else {}
        return ModelFiles(weights=weights, labels=labels, config=config, extra=extra)

    def params_trainable(self, task: Task, params: dict[str, Any], result: TrainResult) -> int:
        """The head's parameters and the encoder's that trained: the kept weights hold exactly those."""
        return sum(tensor.numel() for tensor in result.best_state.values())

    def timed_model(
        self,
        task: Task,
        params: dict[str, Any],
        result: TrainResult,
        archive: Path,
        *,
        batch_size: int,
        device: torch.device,
    ) -> TimedModel:
        """The downloadable model (encoder, pooling and head) on the first batch_size validation texts, tokenized.

        A lora model is timed with its adapters merged into the encoder's weights, as it is served (export_encoder
        merges them too): a copy's, so the process-wide encoder stays pristine for later trials.
        """
        key = self._key(task)
        if key not in self._latency_texts:
            validation = load_split(task, self.roots).validation_texts
            self._latency_texts[key] = list(validation[:MAX_LATENCY_BATCH_SIZE])
        texts = self._latency_texts[key]
        batch = [texts[i % len(texts)] for i in range(batch_size)]
        model = load_best_model(archive, merge=True)
        encoded = model.tokenizer(
            batch, truncation=True, max_length=model.max_length, padding=True, return_tensors="pt"
        )
        return TimedModel(
            module=model.classifier.to(device).eval(),
            inputs=(encoded["input_ids"].to(device), encoded["attention_mask"].to(device)),
        )
