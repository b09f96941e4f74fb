"""Kind python example: fine-tune an image classifier (torchvision's ResNet-18 or MobileNet V3 Small) on local images."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from tunefleet import Trial

if TYPE_CHECKING:
    from torchvision import transforms

log = logging.getLogger(__name__)

# The architecture's name, and the dotted name of the last layer the data set's classes replace. small-cnn is
# plain PyTorch, for machines without a torchvision built for their torch; the others are torchvision's.
HEADS = {"resnet18": "fc", "mobilenet_v3_small": "classifier.3", "small-cnn": "fc"}
# `data: fake:N` draws N random images of this many classes: a stand-in that needs no files.
FAKE_PREFIX = "fake:"
FAKE_CLASSES = 4
# The split does not depend on the trial's seed, so every trial is judged on the same validation images.
DATA_SEED = 0
# torchvision's ImageNet weights were trained on inputs normalised with these; fine-tuning keeps them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULTS: dict[str, Any] = {
    "architecture": "resnet18",
    "weights": "",
    "image_size": 64,
    "validation_fraction": 0.2,
    "freeze_backbone": 0,
    "num_workers": 0,
    "learning_rate": 1e-3,
    "batch_size": 32,
    "epochs": 5,
    "optimizer": "adam",
    "momentum": 0.9,
}


@dataclass(frozen=True)
class ImageData:
    """The training and validation images, and the class names in label order."""

    train: Subset[tuple[torch.Tensor, int]]
    validation: Subset[tuple[torch.Tensor, int]]
    classes: list[str]


def _torchvision(needed_for: str) -> Any:
    try:
        import torchvision
    except (
        ImportError,
        RuntimeError,
    ) as error:  # a build for another torch fails at import with a RuntimeError
        raise ValueError(
            f"{needed_for} needs torchvision built for this worker's torch ({error}); use architecture small-cnn"
            " and data fake:N without it"
        ) from None
    return torchvision


class SmallCNN(nn.Module):
    """A small convolutional classifier in plain PyTorch: two conv blocks, global pooling, a last Linear `fc`."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(32, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


class FakeImages(Dataset[tuple[torch.Tensor, int]]):
    """size random images of FAKE_CLASSES classes, the same on every worker: each class has its own mean colour,
    so a model can learn them (torchvision's FakeData draws labels unrelated to the pixels)."""

    def __init__(self, size: int, image_size: int) -> None:
        generator = torch.Generator().manual_seed(DATA_SEED)
        self.labels = torch.randint(0, FAKE_CLASSES, (size,), generator=generator)
        colours = torch.rand(FAKE_CLASSES, 3, 1, 1, generator=generator) * 2 - 1
        noise = torch.randn(size, 3, image_size, image_size, generator=generator)
        self.images = colours[self.labels] + noise

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def image_transform(image_size: int, *, train: bool) -> transforms.Compose:
    """Square images of image_size pixels, normalised as torchvision's pretrained weights expect."""
    transforms = _torchvision("an image folder").transforms
    steps: list[Any] = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    if train:
        # Flipping is the cheapest augmentation that holds for most photos; the validation images stay as they are.
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return transforms.Compose(steps)


def _images(data: str, image_size: int, *, train: bool) -> Dataset[tuple[torch.Tensor, int]]:
    if data.startswith(FAKE_PREFIX):
        try:
            size = int(data.removeprefix(FAKE_PREFIX))
        except ValueError:
            raise ValueError(f"data {data!r}: fake:N takes a whole number of images, e.g. fake:512") from None
        if size < 2:
            raise ValueError(
                f"data {data!r}: fake data needs at least 2 images, one to train and one to validate"
            )
        return FakeImages(size, image_size)
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise ValueError(f"data {data!r} is not a folder of images (one subfolder per class), nor fake:N")
    datasets = _torchvision("an image folder").datasets
    return datasets.ImageFolder(folder, transform=image_transform(image_size, train=train))


def load_data(data: str, image_size: int = 64, validation_fraction: float = 0.2) -> ImageData:
    """A local image folder (torchvision ImageFolder layout: one subfolder per class) or `fake:N`, split in two.

    The split is seeded by DATA_SEED alone; the training images are flipped at random, the validation ones not.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction is {validation_fraction}, not between 0 and 1")
    train_view = _images(data, image_size, train=True)
    validation_view = _images(data, image_size, train=False)
    n = len(validation_view)  # type: ignore[arg-type]
    n_validation = max(1, round(n * validation_fraction))
    if n - n_validation < 1:
        raise ValueError(f"data {data!r} has {n} images: too few to split into training and validation")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(DATA_SEED)).tolist()
    if isinstance(validation_view, FakeImages):
        classes = [f"class_{i}" for i in range(FAKE_CLASSES)]
    else:
        classes = list(cast(Any, validation_view).classes)  # ImageFolder
    return ImageData(
        train=Subset(train_view, order[n_validation:]),
        validation=Subset(validation_view, order[:n_validation]),
        classes=classes,
    )


def _load_backbone(model: nn.Module, weights: Path, architecture: str) -> None:
    """Load a state_dict saved from the architecture into model, all but its last layer (the classes differ)."""
    head = HEADS[architecture] + "."
    # weights_only: a state_dict is tensors alone, and a file that holds anything else is refused, not run.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"weights {weights}: not a state_dict; save one with torch.save(model.state_dict(), path)"
        )
    backbone = {name: tensor for name, tensor in state.items() if not name.startswith(head)}
    try:
        result = model.load_state_dict(backbone, strict=False)
    except RuntimeError as error:  # a tensor of another shape: the file is of another architecture
        detail = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"weights {weights} do not fit {architecture}: {detail}") from None
    missing = [name for name in result.missing_keys if not name.startswith(head)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"weights {weights} do not fit {architecture}: missing {missing[:3]}, unexpected"
            f" {result.unexpected_keys[:3]}"
        )


def build_model(architecture: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """The torchvision architecture with its pretrained weights from a local file (none: random
    initialisation), and a new last layer for num_classes classes.

    torchvision is never asked for weights: nothing is downloaded, whatever the file system holds.
    """
    if architecture not in HEADS:
        raise ValueError(f"architecture {architecture!r} is not one of {', '.join(HEADS)}")
    if architecture == "small-cnn":
        model: nn.Module = SmallCNN()
    else:
        model = getattr(_torchvision(f"architecture {architecture}").models, architecture)(weights=None)
    if weights:
        _load_backbone(model, Path(weights).expanduser(), architecture)
    parent_name, _, last_name = HEADS[architecture].rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(last_name)
    assert isinstance(old, nn.Linear)
    setattr(parent, last_name, nn.Linear(old.in_features, num_classes))
    return model


def head_of(model: nn.Module, architecture: str) -> nn.Module:
    """The model's last layer, the one for the data set's classes."""
    return model.get_submodule(HEADS[architecture])


def evaluate(
    model: nn.Module, loader: DataLoader[tuple[torch.Tensor, int]], device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the loader's images."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = model(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
            seen += len(labels)
    return loss_sum / seen, correct / seen


def make_optimizer(parameters: list[nn.Parameter], params: Mapping[str, Any]) -> torch.optim.Optimizer:
    """sgd (with momentum, a parameter sampled only for sgd) or adam, at the trial's learning rate."""
    learning_rate = float(params["learning_rate"])
    name = params["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=learning_rate, momentum=float(params["momentum"]))
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    raise ValueError(f"optimizer {name!r} is not sgd or adam")


def is_true(value: object) -> bool:
    """A flag from the space: the choices are numbers or text (1, 0, "true", "false"), or a bool by hand."""
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes"):
            return True
        if value.strip().lower() in ("0", "false", "no", ""):
            return False
        raise ValueError(f"{value!r} is not a flag: use 1 or 0")
    return bool(value)


def settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's parameters over DEFAULTS; `data` has no default."""
    if "data" not in params:
        raise ValueError("the space needs data: a folder of images (one subfolder per class), or fake:N")
    return {**DEFAULTS, **params}


def loaders(
    data: ImageData, batch_size: int, seed: int, num_workers: int = 0, device: torch.device | None = None
) -> tuple[DataLoader[tuple[torch.Tensor, int]], DataLoader[tuple[torch.Tensor, int]]]:
    """The training loader, shuffled by the seed, and the validation loader in a fixed order."""
    pin = device is not None and device.type == "cuda"
    train = DataLoader(
        data.train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=num_workers,
        pin_memory=pin,
        # A batch of one image breaks batch normalisation in training mode: the odd one out waits for the next epoch.
        drop_last=len(data.train) % batch_size == 1,
    )
    validation = DataLoader(data.validation, batch_size=batch_size, num_workers=num_workers, pin_memory=pin)
    return train, validation


def train(trial: Trial) -> None:
    """Fine-tune a torchvision classifier on the trial's images, reporting validation loss and accuracy each epoch.

    Parameters (trial.params), fixed or searched:

    - data: a local folder of images in torchvision's ImageFolder layout (one subfolder per class), or `fake:N`
      for N random images of FAKE_CLASSES classes, each with its own mean colour (no torchvision needed); split
      into training and validation by DATA_SEED.
    - weights: a local file saved with `torch.save(model.state_dict(), path)` from the same torchvision
      architecture (e.g. ImageNet weights); absent or empty, the model starts from random initialisation
      (and says so in the log). Never downloaded.
    - architecture: resnet18 (default) or mobilenet_v3_small (both torchvision's), or small-cnn (plain PyTorch);
      its last layer is replaced for the data's classes.
    - freeze_backbone: 1 trains the new last layer alone (the backbone keeps its weights and batch-norm
      statistics); 0 (default) fine-tunes everything.
    - learning_rate, batch_size, epochs, optimizer (sgd or adam), momentum (sgd only).
    - image_size (64), validation_fraction (0.2), num_workers (0: images load in the worker's own process).
    """
    params = settings(trial.params)
    architecture = str(params["architecture"])
    device = trial.device
    # One seed for the new layer's (or the whole model's) initialisation, the flips and the shuffling:
    # a trial handed back and run again trains the same model.
    torch.manual_seed(trial.seed)
    data = load_data(str(params["data"]), int(params["image_size"]), float(params["validation_fraction"]))
    weights = str(params["weights"] or "")
    if not weights:
        log.info(
            "trial %d: no weights given, %s starts from random initialisation", trial.number, architecture
        )
    model = build_model(architecture, len(data.classes), weights).to(device)
    frozen = is_true(params["freeze_backbone"])
    if frozen:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in head_of(model, architecture).parameters():
            parameter.requires_grad_(True)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], params)
    train_loader, validation_loader = loaders(
        data, int(params["batch_size"]), trial.seed, int(params["num_workers"]), device
    )
    config = {
        "architecture": architecture,
        "num_classes": len(data.classes),
        "image_size": params["image_size"],
    }
    for epoch in range(1, int(params["epochs"]) + 1):
        # A frozen backbone stays in evaluation mode, so its batch-norm statistics stay the pretrained ones.
        model.train(not frozen)
        loss_sum, seen = 0.0, 0
        for images, labels in train_loader:
            if trial.should_stop():
                return  # the worker is stopping (the trial is handed back, to rerun with the same seed) or lost
            images, labels = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            seen += len(labels)
        val_loss, val_accuracy = evaluate(model, validation_loader, device)
        # Saved before the report, so the epoch that ends the trial (its best, perhaps) still has its weights.
        trial.save_model(model, labels=data.classes, config=config)
        if trial.report(
            epoch, val_loss=val_loss, val_accuracy=val_accuracy, train_loss=loss_sum / max(seen, 1)
        ):
            return  # pruned, study stopped, or no better for the objective's patience
