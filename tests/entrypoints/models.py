"""Small pretrained models for the torch-module tests: a classifier MLP, and factories that build it empty."""

from __future__ import annotations

import torch

HASHED_FEATURES = 64
N_COLUMNS = 4
HIDDEN = 128
OLD_CLASSES = 5


class TextClassifier(torch.nn.Module):
    """An MLP classifier whose last layer, classifier[1], is Linear(128, 5): the layer a study replaces."""

    def __init__(self, n_inputs: int = HASHED_FEATURES, n_classes: int = OLD_CLASSES) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Linear(n_inputs, HIDDEN), torch.nn.ReLU())
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(HIDDEN, n_classes))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the old classes."""
        return self.classifier(self.features(inputs))


class Probabilities(TextClassifier):
    """The same classifier ending in a softmax: its last Linear layer's output is not the model's output."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Probabilities of the old classes."""
        return torch.softmax(self.classifier(self.features(inputs)), dim=1)


def tabular_classifier() -> TextClassifier:
    """The empty classifier for four numeric columns, which a saved state_dict fills."""
    return TextClassifier(n_inputs=N_COLUMNS)
