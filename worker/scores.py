"""A classifier's validation scores: mean cross-entropy, accuracy and macro-averaged F1."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Scores(NamedTuple):
    """What one evaluation pass over a validation set measured."""

    loss: float
    accuracy: float
    macro_f1: float


def macro_f1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The unweighted mean of each class's F1 over the classes in labels or predicted (class indexes, 1-D).

    As scikit-learn's f1_score(average="macro", zero_division=0): a class neither present nor predicted is left
    out, and a class present but never predicted (or predicted but never present) scores 0.
    """
    predicted = predicted.reshape(-1).long()
    labels = labels.reshape(-1).long().to(predicted.device)
    if predicted.shape != labels.shape:
        raise ValueError(f"{predicted.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        return 0.0
    n_classes = int(torch.maximum(predicted.max(), labels.max()).item()) + 1
    true_positives = torch.bincount(labels[predicted == labels], minlength=n_classes)
    # F1 = 2TP / (2TP + FP + FN), and 2TP + FP + FN is how often a class was predicted plus how often it occurs.
    counted = torch.bincount(predicted, minlength=n_classes) + torch.bincount(labels, minlength=n_classes)
    seen = counted > 0
    per_class = 2.0 * true_positives[seen].double() / counted[seen].double()
    return float(per_class.mean().item())
