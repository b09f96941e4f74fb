"""Validation macro-F1: computed as scikit-learn computes it, by every evaluation, and followed by an objective naming it."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import f1_score

from worker.epochs import EpochResult, keep_rule
from worker.features import Features
from worker.finetune import TokenizedTexts, evaluate_tokens
from worker.hyperparams import HeadParams
from worker.model import build_head
from worker.module_inputs import FeatureRows
from worker.module_training import evaluate_rows
from worker.runner import chosen_epoch
from worker.scores import macro_f1
from worker.tasks.synthetic import run_synthetic
from worker.training import train_head
from worker.user_trial import Trial, TrialUsageError


def tensors(*rows: list[int]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(row) for row in rows)


def test_imbalanced_labels_with_one_never_predicted_score_below_the_accuracy() -> None:
    labels, predicted = tensors([0, 0, 0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0, 2, 0])
    # By hand, F1 = 2TP / (predicted + actual): class 0 12/15, class 1 (never predicted) 0, class 2 2/3.
    assert macro_f1(predicted, labels) == pytest.approx((0.8 + 0.0 + 2 / 3) / 3)
    assert macro_f1(predicted, labels) == pytest.approx(0.4888888888888889)
    accuracy = (predicted == labels).double().mean().item()
    assert accuracy == pytest.approx(0.7)


def test_a_class_neither_present_nor_predicted_is_left_out() -> None:
    labels, predicted = tensors([0, 0, 2, 2], [0, 2, 2, 2])
    # Class 1 appears nowhere: the mean is over classes 0 (2/3) and 2 (4/5), not three classes.
    assert macro_f1(predicted, labels) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_a_class_predicted_but_never_present_scores_zero() -> None:
    labels, predicted = tensors([0, 0], [0, 1])
    assert macro_f1(predicted, labels) == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro_f1(*tensors([1, 1, 0], [1, 1, 0])) == 1.0


def test_it_matches_scikit_learns_macro_f1_with_zero_division_zero() -> None:
    generator = torch.Generator().manual_seed(7)
    for _ in range(200):
        n_rows = int(torch.randint(1, 50, (1,), generator=generator))
        n_classes = int(torch.randint(1, 8, (1,), generator=generator))
        labels = torch.randint(0, n_classes, (n_rows,), generator=generator)
        predicted = torch.randint(0, n_classes, (n_rows,), generator=generator)
        expected = f1_score(labels.numpy(), predicted.numpy(), average="macro", zero_division=0)
        assert macro_f1(predicted, labels) == pytest.approx(expected, abs=1e-12)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        macro_f1(*tensors([0, 1, 1], [0, 1]))


class FirstTokenClassifier(torch.nn.Module):
    """Predicts the class its first token id names (ids 0..2), whatever else the text holds."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(input_ids[:, 0], 3).float() * 5.0


def test_encoder_evaluation_pairs_each_batch_of_texts_with_its_own_labels() -> None:
    # Texts of different lengths: evaluation batches them longest first, not in the texts' order.
    first_tokens = [0, 0, 0, 0, 0, 0, 0, 0, 2, 0]
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    texts = TokenizedTexts(
        ids=[torch.tensor([token] + [1] * (i % 4)) for i, token in enumerate(first_tokens)], labels=labels
    )
    scores = evaluate_tokens(
        FirstTokenClassifier(), texts, pad_id=0, batch_size=3, device=torch.device("cpu")
    )
    assert scores.accuracy == pytest.approx(0.7)
    assert scores.macro_f1 == pytest.approx(f1_score(labels, first_tokens, average="macro", zero_division=0))
    assert scores.macro_f1 == pytest.approx(0.4888888888888889)


def test_module_evaluation_scores_macro_f1_over_every_chunk() -> None:
    predicted = [0, 0, 0, 0, 0, 0, 0, 0, 2, 0]
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    rows = FeatureRows(dense=torch.nn.functional.one_hot(torch.tensor(predicted), 3).float())
    identity = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(3))
    scores = evaluate_rows(identity, rows, labels, device=torch.device("cpu"))
    assert (scores.accuracy, scores.macro_f1) == pytest.approx((0.7, 0.4888888888888889))


def epoch(number: int, *, loss: float, accuracy: float, f1: float) -> EpochResult:
    return EpochResult(epoch=number, train_loss=loss, val_loss=loss, val_accuracy=accuracy, val_macro_f1=f1)


def test_an_objective_on_macro_f1_keeps_and_chooses_its_best_epoch_not_the_most_accurate() -> None:
    epochs = [
        epoch(1, loss=0.9, accuracy=0.70, f1=0.40),
        epoch(2, loss=0.8, accuracy=0.80, f1=0.55),
        epoch(3, loss=0.7, accuracy=0.85, f1=0.50),
    ]
    assert chosen_epoch(epochs, metric="val_macro_f1", value="best").epoch == 2
    assert chosen_epoch(epochs, metric="val_accuracy", value="best").epoch == 3
    keep = keep_rule(metric="val_macro_f1", value="best")
    assert min(epochs, key=keep).epoch == 2


def test_every_synthetic_epoch_has_a_macro_f1_that_falls_with_its_loss() -> None:
    seen: list[EpochResult] = []
    run_synthetic(
        params={"epochs": 4}, seed=3, epoch_sleep_s=0.0, on_epoch=seen.append, interrupted=lambda: None
    )
    again: list[EpochResult] = []
    run_synthetic(
        params={"epochs": 4}, seed=3, epoch_sleep_s=0.0, on_epoch=again.append, interrupted=lambda: None
    )
    assert [e.val_macro_f1 for e in seen] == [e.val_macro_f1 for e in again]
    for result in seen:
        assert 0.0 < result.val_macro_f1 <= result.val_accuracy <= 1.0
        assert result.val_macro_f1 == pytest.approx(1.0 / (1.0 + 2.0 * result.val_loss))


def test_head_training_reports_the_macro_f1_of_its_validation_predictions() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=generator) * 3
    # Imbalanced: 30, 6 and 4 examples per class, so accuracy and macro-F1 part ways.
    labels = torch.tensor([0] * 30 + [1] * 6 + [2] * 4)
    inputs = centres[labels] + torch.randn(len(labels), 8, generator=generator) * 2.5
    features = Features(
        train=inputs,
        train_labels=labels,
        validation=inputs.flip(0),
        validation_labels=labels.flip(0),
        label_names=["a", "b", "c"],
    )
    params = HeadParams(
        learning_rate=0.05, batch_size=8, epochs=3, depth=0, width=None, activation=None, optimizer="adam"
    )
    result = train_head(
        features=features,
        params=params,
        seed=1,
        device=torch.device("cpu"),
        keep=keep_rule(metric="val_macro_f1", value="best"),
    )
    for reported in result.epochs:
        assert 0.0 <= reported.val_macro_f1 <= 1.0
    assert any(e.val_macro_f1 != pytest.approx(e.val_accuracy) for e in result.epochs)
    # The kept head's own predictions give the macro-F1 its epoch reported, as scikit-learn scores them.
    kept = next(e for e in result.epochs if e.epoch == result.kept_epoch)
    assert kept.val_macro_f1 == max(e.val_macro_f1 for e in result.epochs)
    head = build_head(input_size=8, n_classes=3, depth=0)
    head.load_state_dict(result.best_state)
    with torch.no_grad():
        predicted = head(features.validation).argmax(dim=1)
    expected = f1_score(features.validation_labels, predicted, average="macro", zero_division=0)
    assert kept.val_macro_f1 == pytest.approx(expected)


def test_a_python_trial_on_macro_f1_must_report_it_and_is_judged_by_it() -> None:
    trial = Trial({"width": 8}, metric="val_macro_f1")
    with pytest.raises(TrialUsageError, match="has no val_macro_f1, the study's objective metric"):
        trial.report(1, val_loss=0.5, val_accuracy=0.9)
    assert not trial.report(1, val_loss=0.5, val_accuracy=0.9, val_macro_f1=0.6)
    assert not trial.report(2, val_loss=0.4, val_accuracy=0.95, val_macro_f1=0.5)
    result = trial._finish(None)
    assert result.best_epoch == 1
    assert result.epochs[0].val_macro_f1 == 0.6
    # Not reported under an objective of val_loss: NaN, as an unreported val_accuracy is.
    other = Trial({}, metric="val_loss")
    other.report(1, val_loss=0.5)
    assert math.isnan(other._finish(None).epochs[0].val_macro_f1)
