"""Training functions for kind python studies, written as a user writes them, and ones that fail as users' code does.

`train` is the real one: a small MLP on a seeded synthetic classification set, reporting each epoch and saving its
model. The others each break one rule a worker must answer with a clear reason.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from tunefleet import Trial

DATA_SEED = 1234
N_FEATURES = 8
LABELS = ["north", "east", "west"]
# The validation losses the marker functions report, epoch by epoch: the best is epoch 2, the final epoch 3.
MARKER_LOSSES = [3.0, 1.0, 2.0]


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs in eight dimensions, the same on every worker: train features and labels, then validation."""
    generator = torch.Generator().manual_seed(DATA_SEED)
    centers = torch.randn(len(LABELS), N_FEATURES, generator=generator) * 1.5

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, len(LABELS), (n,), generator=generator)
        return centers[labels] + torch.randn(n, N_FEATURES, generator=generator), labels

    x_train, y_train = draw(192)
    x_val, y_val = draw(96)
    return x_train, y_train, x_val, y_val


def build_model(params: dict[str, Any]) -> torch.nn.Sequential:
    """The MLP a trial trains: its width is the `hidden` parameter."""
    hidden = int(params.get("hidden", 16))
    return torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, len(LABELS))
    )


def evaluate(model: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy."""
    model.eval()
    with torch.no_grad():
        logits = model(features)
        loss = F.cross_entropy(logits, labels).item()
        accuracy = (logits.argmax(dim=1) == labels).float().mean().item()
    return loss, accuracy


def _optimizer(model: torch.nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer:
    learning_rate = float(params.get("learning_rate", 0.05))
    if params.get("optimizer", "adam") == "sgd":
        # momentum is conditional on optimizer sgd: it is in params exactly then.
        return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=float(params["momentum"]))
    return torch.optim.Adam(model.parameters(), lr=learning_rate)


def train(trial: Trial) -> None:
    """Train the MLP for `epochs` epochs, reporting validation loss and accuracy and saving the model each epoch.

    `epoch_sleep_s` (default 0) spreads a pause over each epoch's batches, so a test can stop a worker mid-trial.
    """
    torch.manual_seed(trial.seed)
    x_train, y_train, x_val, y_val = (tensor.to(trial.device) for tensor in make_data())
    model = build_model(trial.params).to(trial.device)
    optimizer = _optimizer(model, trial.params)
    batch_size = int(trial.params.get("batch_size", 32))
    pause_s = float(trial.params.get("epoch_sleep_s", 0.0)) * batch_size / len(x_train)
    for epoch in range(1, int(trial.params["epochs"]) + 1):
        model.train()
        order = torch.randperm(len(x_train))
        loss_sum = 0.0
        for start in range(0, len(x_train), batch_size):
            if trial.should_stop():
                return
            time.sleep(pause_s)
            batch = order[start : start + batch_size]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
        val_loss, val_accuracy = evaluate(model, x_val, y_val)
        train_loss = loss_sum / len(x_train)
        if trial.report(epoch, val_loss=val_loss, val_accuracy=val_accuracy, train_loss=train_loss):
            return
        trial.save_model(model, labels=LABELS, config={"hidden": int(trial.params.get("hidden", 16))})


def returns_metrics(trial: Trial) -> dict[str, float]:
    """Train two epochs without reporting, save the model, and return the final metrics."""
    torch.manual_seed(trial.seed)
    x_train, y_train, x_val, y_val = make_data()
    model = build_model(trial.params)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(2):
        model.train()
        loss = F.cross_entropy(model(x_train), y_train)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    val_loss, val_accuracy = evaluate(model, x_val, y_val)
    trial.save_model(model)
    return {"val_loss": val_loss, "val_accuracy": val_accuracy}


def marker_model(epoch: int) -> torch.nn.Linear:
    """A one-weight model whose weight is its epoch: which epoch's weights were kept shows in the download."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(float(epoch))
    return model


def saves_after_report(trial: Trial) -> None:
    """Report MARKER_LOSSES, saving each epoch's weights after its report."""
    for epoch, loss in enumerate(MARKER_LOSSES, start=1):
        if trial.report(epoch, val_loss=loss):
            return
        trial.save_model(marker_model(epoch))


def saves_before_report(trial: Trial) -> None:
    """Report MARKER_LOSSES, saving each epoch's weights before its report."""
    for epoch, loss in enumerate(MARKER_LOSSES, start=1):
        trial.save_model(marker_model(epoch))
        if trial.report(epoch, val_loss=loss):
            return


def ignores_stops(trial: Trial) -> None:
    """Report a loss that is best at epoch 2 and rises after, for ten epochs, whatever report answers."""
    for epoch in range(1, 11):
        trial.report(epoch, val_loss=abs(epoch - 2) + 1.0)
        trial.save_model(marker_model(epoch), labels=["epoch"])


def params_seen(trial: Trial) -> None:
    """Report what the function received: whether momentum was there, and its value (-1 when absent)."""
    trial.report(
        1,
        val_loss=1.0,
        has_momentum=float("momentum" in trial.params),
        momentum=float(trial.params.get("momentum", -1.0)),
    )


def counts_runs(trial: Trial) -> None:
    """Count this trial's runs in its checkpoint folder and report the count as the loss: a rerun that resumed shows."""
    runs_file = trial.checkpoint_dir / "runs.txt"
    runs = int(runs_file.read_text()) + 1 if runs_file.exists() else 1
    runs_file.write_text(str(runs))
    trial.report(1, val_loss=float(runs))


def _read_data() -> None:
    raise ValueError("could not read the training data:\nno column named 'label'")


def raises(trial: Trial) -> None:
    """Fail as buggy user code does: an exception from deep inside, its message on two lines."""
    trial.report(1, val_loss=1.0)
    _read_data()


def never_reports(trial: Trial) -> None:
    """Return without reporting an epoch or returning metrics."""
    torch.manual_seed(trial.seed)


def diverges(trial: Trial) -> None:
    """Report a finite loss, then NaN."""
    trial.report(1, val_loss=1.0)
    trial.report(2, val_loss=float("nan"))


def out_of_memory(trial: Trial) -> None:
    """Run out of GPU memory, as torch says it, when batch_size is 256 or more; else train."""
    if int(trial.params["batch_size"]) >= 256:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    train(trial)


def out_of_memory_wide(trial: Trial) -> None:
    """Run out of GPU memory on a width of the user's own naming: there is no batch_size to blame."""
    raise torch.cuda.OutOfMemoryError(f"CUDA out of memory with {trial.params['hidden']} hidden units")


def takes_two_arguments(trial: Trial, data: str) -> None:
    """Wrong: an entry point takes the trial and nothing else."""


not_a_function = 42
