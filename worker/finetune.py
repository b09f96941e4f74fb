"""Fine-tune through the encoder (last-k, full, lora): token ids, length buckets, one seeded run per trial."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from worker.data import LabelledSplit
from worker.epochs import EpochCheckpoints, EpochResult, KeepRule, TrainResult, by_val_loss, run_epochs
from worker.hyperparams import HeadParams, make_optimizer
from worker.lora import ADAPTER_PREFIX, LoraParams, adapter_state, with_adapters
from worker.model import Encoder, EncoderClassifier, build_head, effective_max_length, mark_trainable
from worker.scores import Scores, macro_f1
from worker.tokenizer_check import check_coverage

logger = logging.getLogger(__name__)

# Batches are cut from chunks of this many batches, sorted by length inside each chunk: most of
# the padding goes away, and the chunks (and the batches) are still shuffled every epoch.
BUCKET_BATCHES = 32


@dataclass(frozen=True)
class TokenizedTexts:
    """Token ids of each text (unpadded, truncated) and the int64 labels."""

    ids: list[torch.Tensor]
    labels: torch.Tensor

    @property
    def lengths(self) -> list[int]:
        """The number of tokens of each text."""
        return [int(ids.shape[0]) for ids in self.ids]


@dataclass(frozen=True)
class Tokens:
    """A split tokenized once for every trial of a process: what last-k and full train on."""

    train: TokenizedTexts
    validation: TokenizedTexts
    label_names: list[str]
    pad_id: int
    max_length: int


def _tokenize(encoder: Encoder, texts: list[str], labels: list[int], max_length: int) -> TokenizedTexts:
    encoded = encoder.tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    ids = [torch.tensor(row, dtype=torch.int64) for row in encoded["input_ids"]]
    return TokenizedTexts(ids=ids, labels=torch.tensor(labels, dtype=torch.int64))


def tokenize_split(encoder: Encoder, split: LabelledSplit, *, max_length: int) -> Tokens:
    """Tokenize train and validation texts once, truncated to the encoder's effective max length.

    TokenizerError when the tokenizer reads most of a sample of the training texts as unknown tokens.
    """
    started = time.perf_counter()
    # A tokenizer that reads the texts as unknown tokens would train every trial to chance.
    check_coverage(encoder.tokenizer, split.train_texts, encoder.folder)
    length = effective_max_length(encoder, max_length)
    pad_id = encoder.tokenizer.pad_token_id
    n_texts = len(split.train_texts) + len(split.validation_texts)
    logger.info("tokenizing %d texts (max_length %d) for fine-tuning through the encoder", n_texts, length)
    tokens = Tokens(
        train=_tokenize(encoder, split.train_texts, split.train_labels, length),
        validation=_tokenize(encoder, split.validation_texts, split.validation_labels, length),
        label_names=list(split.label_names),
        pad_id=int(pad_id) if pad_id is not None else 0,
        max_length=length,
    )
    n_tokens = sum(tokens.train.lengths) + sum(tokens.validation.lengths)
    logger.info(
        "tokenized %d texts into %d tokens in %.1fs", n_texts, n_tokens, time.perf_counter() - started
    )
    return tokens


def length_batches(lengths: list[int], batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    """Indices in batches of similar length: shuffled with the generator, or longest first without one."""
    if generator is None:
        # Longest first: an evaluation that runs out of memory does so on its first batch.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    permutation = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(permutation), chunk):
        bucket = sorted(permutation[start : start + chunk], key=lambda i: lengths[i], reverse=True)
        batches.extend(bucket[i : i + batch_size] for i in range(0, len(bucket), batch_size))
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]


def collate(
    texts: TokenizedTexts, indices: list[int], *, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded input ids, attention mask and labels of a batch, on the device."""
    sequences = [texts.ids[i] for i in indices]
    input_ids = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([s.shape[0] for s in sequences], dtype=torch.int64)
    attention_mask = (torch.arange(input_ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.int64)
    labels = texts.labels[torch.tensor(indices, dtype=torch.int64)]
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously while the GPU finishes the last step.
        return (
            input_ids.pin_memory().to(device, non_blocking=True),
            attention_mask.pin_memory().to(device, non_blocking=True),
            labels.pin_memory().to(device, non_blocking=True),
        )
    return input_ids, attention_mask, labels


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on a CUDA device that supports it; plain fp32 everywhere else."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        # bf16 keeps fp32's exponent range, so no loss scaling is needed (unlike fp16).
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate_tokens(
    model: torch.nn.Module,
    texts: TokenizedTexts,
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> Scores:
    """The mean cross-entropy, accuracy and macro-averaged F1 of an encoder classifier on tokenized texts."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    predicted: list[torch.Tensor] = []
    # Batches come in length order, not the texts' order: each batch's labels go with its predictions.
    actual: list[torch.Tensor] = []
    with torch.no_grad(), autocast_for(device):
        for indices in length_batches(texts.lengths, batch_size, None):
            input_ids, attention_mask, labels = collate(texts, indices, pad_id=pad_id, device=device)
            logits = model(input_ids, attention_mask).float()
            loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").double()
            predicted.append(logits.argmax(dim=1))
            actual.append(labels)
    predictions, labels = torch.cat(predicted), torch.cat(actual)
    n_rows = len(texts.ids)
    correct = (predictions == labels).sum()
    return Scores(loss_sum.item() / n_rows, correct.item() / n_rows, macro_f1(predictions, labels))


def build_classifier(
    encoder: Encoder,
    *,
    n_classes: int,
    params: HeadParams,
    finetune: str,
    k: int | None,
    lora: LoraParams | None = None,
) -> tuple[EncoderClassifier, list[torch.nn.Module]]:
    """A private copy of the pristine encoder (lora: fresh adapters around its shared weights) with a fresh head;
    returns it and the encoder modules that train."""
    model: torch.nn.Module
    trained: list[torch.nn.Module]
    if finetune == "lora":
        if lora is None:
            raise ValueError("finetune lora needs its lora parameters")
        # No copy of the weights: the adapters train, and the pristine weights under them stay frozen.
        model = with_adapters(encoder.model, lora)
        # In train mode as a whole, as peft's own training runs it (its dropout and the adapters' on).
        trained = [model]
    else:
        # Deep-copied per trial: the cached encoder stays pristine, so no trial sees another's updates.
        model = copy.deepcopy(encoder.model)
        trained = mark_trainable(model, finetune=finetune, k=k)
    head = build_head(
        input_size=encoder.hidden_size,
        n_classes=n_classes,
        depth=params.depth,
        width=params.width,
        activation=params.activation,
    )
    return EncoderClassifier(model, head), trained


def _train_mode(classifier: EncoderClassifier, trained: list[torch.nn.Module]) -> None:
    # Frozen blocks stay in eval mode (no dropout): they act as the feature extractor they are.
    classifier.eval()
    classifier.head.train()
    for module in trained:
        module.train()


def _batches(
    tokens: Tokens, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for indices in length_batches(tokens.train.lengths, batch_size, generator):
        yield collate(tokens.train, indices, pad_id=tokens.pad_id, device=device)


def train_encoder(
    *,
    encoder: Encoder,
    tokens: Tokens,
    params: HeadParams,
    finetune: str,
    k: int | None,
    encoder_learning_rate: float | None,
    seed: int,
    device: torch.device,
    lora: LoraParams | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    interrupted: Callable[[], str | None] | None = None,
    keep: KeepRule = by_val_loss,
    run_name: str = "training",
    checkpoints: EpochCheckpoints | None = None,
) -> TrainResult:
    """Train a head and the encoder's top k blocks (or all of it, or lora's adapters) on tokens; same seed and
    device, same losses.

    The callbacks, errors and result are run_epochs'; best_state names tensors `head.*` and `encoder.*`
    (only the trained encoder parameters), or for lora `adapter.*` (peft's names for the adapters' tensors).
    """
    if not tokens.train.ids or not tokens.validation.ids:
        raise ValueError("train and validation must both have texts")
    started = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if finetune == "lora":
        # Every lora trial's model shares the pristine encoder's weights: they move to the device once.
        encoder.model.to(device)
    classifier, trained = build_classifier(
        encoder, n_classes=len(tokens.label_names), params=params, finetune=finetune, k=k, lora=lora
    )
    classifier.to(device)
    trainable = {name for name, p in classifier.encoder.named_parameters() if p.requires_grad}
    encoder_parameters = [p for name, p in classifier.encoder.named_parameters() if name in trainable]
    optimizer = make_optimizer(
        params.optimizer,
        [
            {"params": list(classifier.head.parameters()), "lr": params.learning_rate},
            {"params": encoder_parameters, "lr": encoder_learning_rate or params.learning_rate},
        ],
        params.learning_rate,
    )

    def trained_state() -> dict[str, torch.Tensor]:
        state = {f"head.{name}": value for name, value in classifier.head.state_dict().items()}
        if finetune == "lora":
            state.update(
                (ADAPTER_PREFIX + name, value) for name, value in adapter_state(classifier.encoder).items()
            )
        else:
            state.update(
                (f"encoder.{name}", value)
                for name, value in classifier.encoder.named_parameters()
                if name in trainable
            )
        return state

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        input_ids, attention_mask, labels = batch
        with autocast_for(device):
            logits = classifier(input_ids, attention_mask)
        return torch.nn.functional.cross_entropy(logits.float(), labels), labels.shape[0]

    return run_epochs(
        epochs=params.epochs,
        n_train=len(tokens.train.ids),
        train_mode=lambda: _train_mode(classifier, trained),
        batches=lambda: _batches(tokens, params.batch_size, generator, device),
        loss_of=loss_of,
        optimizer=optimizer,
        evaluate=lambda: evaluate_tokens(
            classifier, tokens.validation, pad_id=tokens.pad_id, batch_size=params.batch_size, device=device
        ),
        trained=trained_state,
        generator=generator,
        keep=keep,
        on_epoch=on_epoch,
        interrupted=interrupted,
        started=started,
        run_name=run_name,
        checkpoints=checkpoints,
    )
