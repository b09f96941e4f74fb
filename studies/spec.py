"""The study spec (docs/architecture.md, section 3) as pydantic models: the one place a search space is defined."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    SerializerFunctionWrapHandler,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from studies.names import (
    ACTIVATION_NAMES,
    BUILTIN_DATA,
    BUILTIN_MODELS,
    BUILTIN_MODULES,
    DATA_FILE_SUFFIXES,
    ENTRYPOINT_PATTERN,
    FINETUNE_MODES,
    FREEZE_MODES,
    MODEL_FILE_SUFFIXES,
    MODULE_PATH_PATTERN,
    OPTIMIZER_NAMES,
    PARAM_NAME_PATTERN,
    SAMPLER_NAMES,
    STUDY_NAME_PATTERN,
    TASK_KIND_NAMES,
)

Scalar = StrictInt | StrictFloat | StrictStr
MAX_CHOICES = 64
MAX_N_TRIALS = 100_000
# A grid larger than this is a typo, not a search plan; it would also be slow to enumerate.
MAX_GRID_POINTS = 100_000


class _Strict(BaseModel):
    # strict: a JSON true is not the number 1, nor "5" the integer 5 (lax coercion let a body that breaks
    # the API's own schema through; found by the schemathesis fuzz test).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_RANGE_KEYS: dict[str, set[str]] = {
    "float": {"low", "high", "log", "step"},
    "int": {"low", "high", "log", "step"},
    "categorical": {"choices"},
    "fixed": {"value"},
}


class Comparison(_Strict):
    """A numeric condition on another parameter: {ge: 2} is "at least 2"."""

    ge: StrictInt | StrictFloat | None = None
    gt: StrictInt | StrictFloat | None = None
    le: StrictInt | StrictFloat | None = None
    lt: StrictInt | StrictFloat | None = None

    @model_validator(mode="after")
    def _something(self) -> Comparison:
        if not self.model_fields_set:
            raise ValueError("a comparison needs at least one of ge, gt, le, lt")
        for bound in (self.ge, self.gt, self.le, self.lt):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("a comparison's bounds must be finite numbers")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}

    def holds(self, value: Any) -> bool:
        """Whether a numeric value meets every bound."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )


# when: {parent: value}, {parent: [values]} or {parent: {ge: 2}}; one parent per condition.
ConditionValue = Scalar | list[Scalar] | Comparison


class Param(_Strict):
    """One hyperparameter: a float or int range, a list of choices, or a fixed value (written bare).

    In a kind python space, `when` makes it conditional: sampled only when another parameter, drawn
    before it, has one of the given values or meets a comparison.
    """

    type: Literal["float", "int", "categorical", "fixed"]
    low: StrictInt | StrictFloat | None = None
    high: StrictInt | StrictFloat | None = None
    log: bool = False
    step: StrictInt | StrictFloat | None = None
    choices: list[Scalar] | None = None
    value: Scalar | None = None
    when: dict[str, ConditionValue] | None = Field(
        None,
        description="kind python only: sample this parameter only when another one, defined before it, has one"
        " of these values ({optimizer: sgd}, {optimizer: [sgd, adagrad]}) or meets a comparison ({depth: {ge: 2}})",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_value_is_fixed(cls, data: Any) -> Any:
        if isinstance(data, dict | Param):
            return data
        if isinstance(data, list):
            # [sgd, adam] reads as a list of choices, and is one.
            return {"type": "categorical", "choices": data}
        return {"type": "fixed", "value": data}

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        stray = sorted((self.model_fields_set - {"type", "when"}) - _RANGE_KEYS[self.type])
        if stray:
            raise ValueError(f"{', '.join(stray)} does not apply to a {self.type} parameter")
        if self.type in ("float", "int"):
            self._check_range()
        elif self.type == "categorical":
            if not self.choices:
                raise ValueError("choices must not be empty")
            if len(self.choices) > MAX_CHOICES:
                raise ValueError(f"at most {MAX_CHOICES} choices are allowed, got {len(self.choices)}")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ValueError("choices must not repeat")
        elif self.value is None:
            raise ValueError("a fixed value must not be null")
        if self.when is not None and len(self.when) != 1:
            raise ValueError(f"when names exactly one parameter, got {len(self.when)}")
        return self

    def applies(self, params: Mapping[str, Any]) -> bool:
        """Whether this parameter is sampled, given the parameters drawn before it."""
        if not self.when:
            return True
        ((parent, wanted),) = self.when.items()
        if parent not in params:
            return False
        value = params[parent]
        if isinstance(wanted, Comparison):
            return wanted.holds(value)
        if isinstance(wanted, list):
            return any(_same(value, w) for w in wanted)
        return _same(value, wanted)

    def _check_range(self) -> None:
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs both low and high")
        for bound in (self.low, self.high, self.step):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("low, high and step must be finite numbers")
        if self.type == "int" and not all(
            isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None
        ):
            raise ValueError("an int range needs integer low, high and step")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError("step must be positive")
            if self.log:
                raise ValueError("step cannot be combined with log")

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        if self.type == "fixed" and self.when is None:
            return self.value
        return {k: v for k, v in handler(self).items() if k == "type" or k in self.model_fields_set}

    def discrete_values(self) -> list[Scalar] | None:
        """Every value this parameter can take, or None for a continuous range."""
        if self.type == "fixed":
            assert self.value is not None
            return [self.value]
        if self.type == "categorical":
            return list(self.choices or [])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            step = int(self.step or 1)
            if self.log and self.step is None and self.high - self.low + 1 > MAX_GRID_POINTS:
                return None
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.step is None:
            return None
        count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        return [round(self.low + i * self.step, 12) for i in range(count)]

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest numeric value this parameter can take."""
        if self.type in ("float", "int"):
            assert self.low is not None and self.high is not None
            return float(self.low), float(self.high)
        values = self.discrete_values() or []
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        return min(numbers), max(numbers)


def _same(value: Any, wanted: Any) -> bool:
    # True is not 1 here, as it is not in the spec's strict types.
    return (type(value) is type(wanted) and value == wanted) or (
        isinstance(value, int | float)
        and isinstance(wanted, int | float)
        and not isinstance(value, bool)
        and not isinstance(wanted, bool)
        and value == wanted
    )


def _check_numeric(
    name: str, param: Param, *, integer: bool, minimum: float, maximum: float, strictly_above: bool = False
) -> Param:
    kinds = {"int", "categorical", "fixed"} if integer else {"float", "categorical", "fixed"}
    if param.type not in kinds:
        wanted = "an int range" if integer else "a float range"
        raise ValueError(
            f"{name} must be {wanted}, a list of choices or a fixed value, not a {param.type} range"
        )
    values: list[Any] = (
        [param.low, param.high] if param.type in ("float", "int") else list(param.discrete_values() or [])
    )
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
            raise ValueError(f"{name} values must be {'integers' if integer else 'numbers'}, got {v!r}")
        too_low = v <= minimum if strictly_above else v < minimum
        if too_low or v > maximum or not math.isfinite(v):
            low_text = f"> {minimum:g}" if strictly_above else f">= {minimum:g}"
            raise ValueError(f"{name} values must be {low_text} and <= {maximum:g}, got {v!r}")
    return param


def _check_names(name: str, param: Param, known: tuple[str, ...]) -> Param:
    if param.type not in ("categorical", "fixed"):
        raise ValueError(f"{name} must be a list of choices or a fixed value, not a {param.type} range")
    for v in param.discrete_values() or []:
        if v not in known:
            raise ValueError(f"unknown {name} {v!r}; choose from {', '.join(known)}")
    return param


def _param(default: Any) -> Any:
    return Field(default_factory=lambda: Param.model_validate(default))


class Space(_Strict):
    """The seven searchable hyperparameters of a fine-tuning trial, and an optional eighth for the encoder."""

    learning_rate: Param = _param({"type": "float", "low": 1e-4, "high": 1e-1, "log": True})
    batch_size: Param = _param({"type": "categorical", "choices": [16, 32, 64, 128]})
    epochs: Param = _param({"type": "int", "low": 1, "high": 10})
    depth: Param = _param({"type": "int", "low": 0, "high": 2})
    width: Param = _param({"type": "int", "low": 32, "high": 512, "log": True})
    activation: Param = _param({"type": "categorical", "choices": ["relu", "gelu", "tanh"]})
    optimizer: Param = _param({"type": "categorical", "choices": ["adam", "adamw", "sgd"]})
    encoder_learning_rate: Param | None = Field(
        None,
        description="finetune last-k or full only: the trained encoder blocks' learning rate"
        " (absent: they train at learning_rate)",
    )

    @field_validator("learning_rate", "encoder_learning_rate")
    @classmethod
    def _learning_rate(cls, p: Param | None, info: ValidationInfo) -> Param | None:
        if p is None:
            return None
        return _check_numeric(
            str(info.field_name), p, integer=False, minimum=0.0, maximum=10.0, strictly_above=True
        )

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, p: Param) -> Param:
        return _check_numeric("batch_size", p, integer=True, minimum=1, maximum=65536)

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, p: Param) -> Param:
        return _check_numeric("epochs", p, integer=True, minimum=1, maximum=10_000)

    @field_validator("depth")
    @classmethod
    def _depth(cls, p: Param) -> Param:
        return _check_numeric("depth", p, integer=True, minimum=0, maximum=16)

    @field_validator("width")
    @classmethod
    def _width(cls, p: Param) -> Param:
        return _check_numeric("width", p, integer=True, minimum=1, maximum=65536)

    @field_validator("activation")
    @classmethod
    def _activation(cls, p: Param) -> Param:
        return _check_names("activation", p, ACTIVATION_NAMES)

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, p: Param) -> Param:
        return _check_names("optimizer", p, OPTIMIZER_NAMES)

    @model_validator(mode="after")
    def _no_conditions(self) -> Space:
        for name, param in self.params().items():
            if param.when is not None:
                raise ValueError(
                    f"{name}: when (a condition) applies only to the parameters of a kind python space"
                )
        return self

    def params(self) -> dict[str, Param]:
        """The parameters by name, in a stable order; an optional one left out is not there."""
        return {
            name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None
        }

    def is_conditional(self) -> bool:
        """Whether some parameter is sampled only under a condition (never, in the built-in space)."""
        return False

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # An absent optional parameter stays absent in the stored spec, as the user wrote it.
        return {k: v for k, v in handler(self).items() if v is not None}

    def max_epochs(self) -> int:
        """The most epochs any trial can run: the pruners' max resource."""
        return int(self.epochs.bounds()[1])


MAX_FREE_PARAMS = 256


class FreeSpace(RootModel[dict[Annotated[str, Field(pattern=PARAM_NAME_PATTERN)], Param]]):
    """A kind python study's parameters: the user's own names, each a range, choices or a fixed value.

    A parameter with `when` is conditional on one defined before it; the order is the order written.
    """

    model_config = ConfigDict(frozen=True, strict=True)

    @model_validator(mode="after")
    def _conditions_point_back(self) -> FreeSpace:
        if not self.root:
            raise ValueError("kind python needs a space: the parameters its entry point reads, by name")
        if len(self.root) > MAX_FREE_PARAMS:
            raise ValueError(f"at most {MAX_FREE_PARAMS} parameters are allowed, got {len(self.root)}")
        before: dict[str, Param] = {}
        for name, param in self.root.items():
            if param.when is not None:
                ((parent, wanted),) = param.when.items()
                if parent not in before:
                    raise ValueError(
                        f"{name}: when names {parent!r}, which is not a parameter defined before {name!r}"
                    )
                _check_condition(name, parent, before[parent], wanted)
            before[name] = param
        return self

    def params(self) -> dict[str, Param]:
        """The parameters by name, in the order written (a condition's parent comes first)."""
        return dict(self.root)

    def is_conditional(self) -> bool:
        """Whether some parameter is sampled only under a condition."""
        return any(param.when is not None for param in self.root.values())

    def max_epochs(self) -> int | None:
        """The largest `epochs` value when the space has a numeric `epochs` parameter: the pruners' max resource."""
        epochs = self.root.get("epochs")
        if epochs is None:
            return None
        try:
            return int(epochs.bounds()[1])
        except ValueError:  # an epochs parameter without numbers: the pruner finds its own maximum
            return None


def _check_condition(name: str, parent: str, parent_param: Param, wanted: Any) -> None:
    values = parent_param.discrete_values()
    if isinstance(wanted, Comparison):
        numbers = [v for v in values or [0.0] if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            raise ValueError(f"{name}: when compares {parent!r}, whose values are not numbers")
        return
    if values is None:
        # A continuous range never hits one exact value: a comparison says what is meant.
        raise ValueError(
            f"{name}: when {parent!r} is a continuous range; compare it, e.g. {{{parent}: {{ge: 0.5}}}}"
        )
    for one in wanted if isinstance(wanted, list) else [wanted]:
        if not any(_same(v, one) for v in values):
            raise ValueError(f"{name}: when {parent} is {one!r} never holds; {parent} takes {values!r}")


def _check_text(name: str, value: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    return value


class LocalData(_Strict):
    """Labelled text files on the workers' hosts: CSV, JSONL or Parquet, by file name extension.

    Paths are data, never evaluated; a relative one is relative to each worker's working directory.
    """

    train: str = Field(min_length=1, max_length=4096, description="the training file")
    validation: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="a validation file; absent: task.validation_fraction of train, split with task.data_seed",
    )
    text_column: str = Field("text", min_length=1, max_length=256)
    label_column: str = Field("label", min_length=1, max_length=256)

    @field_validator("train", "validation")
    @classmethod
    def _path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        _check_text(str(info.field_name), v)
        suffix = PurePath(v).suffix.lower()
        if suffix not in DATA_FILE_SUFFIXES:
            raise ValueError(
                f"{info.field_name}: unknown file type {suffix or '(no extension)'!r} of {v!r};"
                f" use {', '.join(DATA_FILE_SUFFIXES)}"
            )
        return v

    @field_validator("text_column", "label_column")
    @classmethod
    def _column(cls, v: str, info: ValidationInfo) -> str:
        return _check_text(str(info.field_name), v)

    @model_validator(mode="after")
    def _distinct_columns(self) -> LocalData:
        if self.text_column == self.label_column:
            raise ValueError(f"text_column and label_column are both {self.text_column!r}")
        return self


def _data_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "builtin"
    if isinstance(value, dict | LocalData):
        return "files"
    return None


# A built-in name, or a mapping of local files. Tagged, so a bad mapping reports only its own errors.
DataSource = Annotated[
    Annotated[str, Field(min_length=1, max_length=4096), Tag("builtin")] | Annotated[LocalData, Tag("files")],
    Discriminator(
        _data_kind,
        custom_error_type="data_source",
        custom_error_message="data must be builtin:NAME or a mapping {train: PATH, validation: PATH, ...}",
    ),
]


class ColumnInputs(_Strict):
    """A torch-module model's inputs: numeric columns of the data files, in this order."""

    kind: Literal["columns"]
    columns: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None,
        min_length=1,
        max_length=100_000,
        description="absent: every column but the label, in file order",
    )


class HashedTextInputs(_Strict):
    """A torch-module model's inputs: the text column hashed into n_features numbers, the same on every worker."""

    kind: Literal["hashed-text"]
    n_features: int = Field(ge=2, le=2**24, description="must equal the model's input width")


Inputs = Annotated[ColumnInputs | HashedTextInputs, Field(discriminator="kind")]

_TEXT, _SYNTHETIC, _MODULE, _PYTHON = TASK_KIND_NAMES
# The task fields each kind reads. The two original kinds keep accepting the others, as they always did.
_KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "model": (_TEXT, _MODULE),
    "data": (_TEXT, _MODULE),
    "finetune": (_TEXT,),
    "k": (_TEXT,),
    "max_length": (_TEXT,),
    "max_examples": (_TEXT, _MODULE),
    "validation_fraction": (_TEXT, _MODULE),
    "data_seed": (_TEXT, _MODULE),
    "epoch_sleep_s": (_SYNTHETIC,),
    "factory": (_MODULE,),
    "replace": (_MODULE,),
    "freeze": (_MODULE,),
    "inputs": (_MODULE,),
    "entrypoint": (_PYTHON,),
}
_NEW_FIELDS = frozenset({"factory", "replace", "freeze", "inputs", "entrypoint"})


class Task(_Strict):
    """What a trial fine-tunes, on which data, and how."""

    kind: Literal["text-classification", "synthetic", "torch-module", "python"] = Field(
        "text-classification",
        description="text-classification: a Hugging Face encoder with a searched head | torch-module: your own"
        " pretrained nn.Module from a file, one layer replaced by the searched head | python: your own training"
        " function | synthetic: a zero-cost task for tests and benchmarks (no model, no data; a seeded loss)",
    )
    model: str = Field("builtin:all-MiniLM-L6-v2", min_length=1, max_length=4096)
    data: DataSource = Field(
        "builtin:bbc-news",
        description="builtin:NAME, or local files {train, validation, text_column, label_column}",
    )
    finetune: str = Field(
        "head", description="head: frozen encoder | last-k: the top k encoder blocks train too | full"
    )
    k: int | None = Field(None, ge=1, le=1024, description="finetune last-k only: how many top blocks train")
    max_length: int = Field(128, ge=8, le=512, description="tokens per text fed to the encoder")
    max_examples: int | None = Field(
        None, ge=10, le=10_000_000, description="a seeded subset of the data, for quick studies"
    )
    validation_fraction: float = Field(0.2, ge=0.05, le=0.5)
    data_seed: int = Field(0, ge=0, le=2**31 - 1)
    epoch_sleep_s: float = Field(
        0.0, ge=0, le=60, description="synthetic task only: seconds each epoch takes"
    )
    factory: str | None = Field(
        None,
        max_length=512,
        description="torch-module only: package.module:function that builds the model a state_dict file fills",
    )
    replace: str | None = Field(
        None,
        max_length=512,
        description="torch-module only: the dotted path of the layer the searched head replaces, e.g. classifier.1",
    )
    freeze: (
        Literal["all-but-replaced", "none"]
        | list[Annotated[str, Field(pattern=MODULE_PATH_PATTERN, max_length=512)]]
        | None
    ) = Field(
        None,
        description="torch-module only: all-but-replaced (default: only the new head trains), none (everything"
        " trains), or the module paths that train beside the head",
    )
    inputs: Inputs | None = Field(
        None,
        description="torch-module only: {kind: columns, columns: [...]} numeric columns (absent: all but the label),"
        " or {kind: hashed-text, n_features: N} the text column hashed to the model's input width",
    )
    entrypoint: str | None = Field(
        None,
        max_length=512,
        description="python only: package.module:function, importable on every worker, that trains one trial",
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("model must not contain NUL characters")
        known = (*BUILTIN_MODELS, *BUILTIN_MODULES)
        if v.startswith("builtin:") and v.removeprefix("builtin:") not in known:
            raise ValueError(f"unknown built-in model {v!r}; built-in: {', '.join(known)}")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: str | LocalData) -> str | LocalData:
        if isinstance(v, LocalData):
            return v
        if v.removeprefix("builtin:") not in BUILTIN_DATA or not v.startswith("builtin:"):
            raise ValueError(
                f"unknown data set {v[:200]!r}; available: {', '.join('builtin:' + d for d in BUILTIN_DATA)},"
                " or local files as a mapping {train: PATH, validation: PATH, text_column, label_column}"
            )
        return v

    @field_validator("finetune")
    @classmethod
    def _finetune(cls, v: str) -> str:
        if v not in FINETUNE_MODES:
            raise ValueError(f"unknown finetune mode {v[:100]!r}; choose from {', '.join(FINETUNE_MODES)}")
        return v

    @model_validator(mode="after")
    def _k_goes_with_last_k(self) -> Task:
        if self.finetune == "last-k" and self.k is None:
            raise ValueError("finetune last-k needs k, the number of top encoder blocks to train")
        if self.finetune != "last-k" and self.k is not None:
            raise ValueError(f"k applies only to finetune last-k, not {self.finetune}")
        return self

    @field_validator("factory", "entrypoint")
    @classmethod
    def _entrypoint(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not re.fullmatch(ENTRYPOINT_PATTERN, v):
            raise ValueError(
                f"{info.field_name} {v[:200]!r} is not package.module:function (e.g. mypkg.train:run)"
            )
        return v

    @field_validator("replace")
    @classmethod
    def _module_path(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(MODULE_PATH_PATTERN, v):
            raise ValueError(f"replace {v[:200]!r} is not a dotted module path (e.g. classifier.1)")
        return v

    @model_validator(mode="after")
    def _fields_fit_the_kind(self) -> Task:
        kind = self.kind
        for name, kinds in _KIND_FIELDS.items():
            if (
                name in self.model_fields_set
                and kind not in kinds
                and (kind in (_MODULE, _PYTHON) or name in _NEW_FIELDS)
            ):
                raise ValueError(f"{name} applies only to kind {' or '.join(kinds)}, not {kind}")
        if kind == _MODULE:
            self._check_torch_module()
        elif kind == _PYTHON and self.entrypoint is None:
            raise ValueError(
                "kind python needs entrypoint: package.module:function, importable on every worker"
            )
        elif kind == _TEXT and self.model.removeprefix("builtin:") in BUILTIN_MODULES:
            raise ValueError(
                f"model {self.model!r} is a built-in torch-module model: use it with kind torch-module"
            )
        elif kind == _TEXT and PurePath(self.model).suffix.lower() in MODEL_FILE_SUFFIXES:
            raise ValueError(
                f"model {self.model[:200]!r} is a file, and a text-classification model is a Hugging Face folder"
                " (config.json, weights, tokenizer); for a model saved with torch.save or TorchScript, use kind"
                " torch-module"
            )
        return self

    def _check_torch_module(self) -> None:
        if "model" not in self.model_fields_set or self.model.removeprefix("builtin:") in BUILTIN_MODELS:
            raise ValueError(
                "kind torch-module needs model: the path of a file saved with torch.save (a whole module, or a"
                f" state_dict with factory), of a TorchScript file, or builtin:{BUILTIN_MODULES[0]}"
            )
        if self.replace is None:
            raise ValueError(
                "kind torch-module needs replace: the dotted path of the layer the head replaces, e.g. classifier.1"
            )
        if self.inputs is None:
            raise ValueError(
                "kind torch-module needs inputs: {kind: columns} for numeric columns, or {kind: hashed-text,"
                " n_features: N} for a text column"
            )
        if isinstance(self.inputs, ColumnInputs) and isinstance(self.data, str):
            raise ValueError(
                "inputs kind columns reads numeric columns of local files; a built-in data set is text: use"
                " inputs kind hashed-text, or data {train: PATH, ...}"
            )
        if self.freeze is None:
            object.__setattr__(self, "freeze", FREEZE_MODES[0])

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # A field the kind does not read stays out of the stored spec unless the user wrote it.
        return {
            name: value
            for name, value in handler(self).items()
            if name in self.model_fields_set or self.kind in _KIND_FIELDS.get(name, (self.kind,))
        }

    def data_key(self) -> str:
        """The data source as canonical JSON: one string per data set, for memo keys and records."""
        source: Any = self.data if isinstance(self.data, str) else self.data.model_dump(mode="json")
        return json.dumps(source, sort_keys=True, separators=(",", ":"))


# Epochs without a better validation metric before a trial ends early. A head's validation loss
# usually bottoms out within its first epochs and then rises: on the BBC preset 200 random trials
# spent about a third of their CPU after a 3-epoch stall, and none of the best 20 found better there
# (bench/early_stopping.py).
DEFAULT_PATIENCE = 3


class Objective(_Strict):
    """What a trial's value is and which way is better."""

    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None
    value: Literal["best", "final"] = Field(
        "best", description="the best epoch's metric, or the last epoch's"
    )
    patience: int = Field(
        DEFAULT_PATIENCE,
        ge=0,
        le=1000,
        description="end a trial after this many epochs without a better metric; it completes with its "
        f"best epoch (default {DEFAULT_PATIENCE} with value best; 0: run every epoch, the only choice "
        "with value final)",
    )

    @model_validator(mode="after")
    def _patience_needs_best(self) -> Objective:
        # The final epoch's metric is the value: ending early would change which epoch that is.
        if self.value == "final":
            if "patience" in self.model_fields_set and self.patience:
                raise ValueError("patience applies only to value best: with value final every epoch runs")
            object.__setattr__(self, "patience", 0)
        return self

    @model_validator(mode="after")
    def _direction_matches_metric(self) -> Objective:
        natural = "minimize" if self.metric == "val_loss" else "maximize"
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(
                f"direction {self.direction!r} would reward worse models: {self.metric} is {natural}d"
            )
        return self


# How much TPE's choice among its candidates weighs their predicted seconds per epoch (studies/_optuna/cost_aware.py).
# On the built-in tasks seconds per epoch span two orders of magnitude across the space and good models
# come from both ends: taking the cheaper of two equally promising candidates reached random search's
# best loss sooner on BBC News (mixed on the tweets preset), and 1.0 did better than 0.5 (bench/NOTES.md, 1).
DEFAULT_COST_WEIGHT = 1.0


class Sampler(_Strict):
    """Which Optuna sampler suggests the hyperparameters."""

    name: Literal["tpe", "random", "grid", "qmc", "cmaes", "gp"] = "tpe"
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n_startup_trials: int | None = Field(None, ge=0, le=10_000)
    cost_weight: float | None = Field(
        None,
        ge=0,
        le=4,
        description="TPE only: how much a candidate's predicted seconds per epoch count against it "
        f"(default {DEFAULT_COST_WEIGHT}; 0: plain TPE)",
    )

    @model_validator(mode="after")
    def _options_apply(self) -> Sampler:
        if self.n_startup_trials is not None and self.name not in ("tpe", "gp", "cmaes"):
            raise ValueError(f"n_startup_trials does not apply to the {self.name} sampler")
        if self.cost_weight is not None and self.name != "tpe":
            raise ValueError(f"cost_weight does not apply to the {self.name} sampler")
        return self


assert set(SAMPLER_NAMES) == set(Sampler.model_fields["name"].annotation.__args__)  # type: ignore[union-attr]


class NoPruner(_Strict):
    """Never prune."""

    name: Literal["none"]


class MedianPruner(_Strict):
    """Prune a trial worse than the median of earlier trials at the same epoch."""

    name: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class PercentilePruner(_Strict):
    """Prune a trial outside the best percentile of earlier trials at the same epoch."""

    name: Literal["percentile"]
    percentile: float = Field(25.0, gt=0, lt=100)
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class SuccessiveHalvingPruner(_Strict):
    """Asynchronous successive halving (ASHA)."""

    name: Literal["successive_halving"]
    min_resource: int | None = Field(None, ge=1)
    reduction_factor: int = Field(3, ge=2, le=100)


class HyperbandPruner(_Strict):
    """Hyperband over epochs, from min_resource up to the space's largest epoch count."""

    name: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2, le=100)


Pruner = Annotated[
    NoPruner | MedianPruner | PercentilePruner | SuccessiveHalvingPruner | HyperbandPruner,
    Field(discriminator="name"),
]


class Budget(_Strict):
    """How many trials a study may run, and for how long."""

    n_trials: int = Field(20, ge=1, le=MAX_N_TRIALS)
    timeout_s: float | None = Field(None, gt=0, le=365 * 24 * 3600)
    max_retries: int = Field(1, ge=0, le=10, description="re-runs of a trial whose worker died")
    max_consecutive_failures: int = Field(
        3, ge=0, le=1000, description="fail the study when its first N trials all fail the same way; 0: never"
    )


class StudySpec(_Strict):
    """Everything a worker needs to run any trial of a study, persisted beside the Optuna study."""

    name: str = Field(pattern=STUDY_NAME_PATTERN, max_length=128)
    description: str = Field("", max_length=4096)
    task: Task = Field(default_factory=Task)
    objective: Objective = Field(default_factory=Objective)
    space: Space | FreeSpace = Field(
        default_factory=Space,
        description="the built-in kinds: the named parameters below; kind python: your own names, each a range,"
        " choices or a fixed value, optionally with when",
    )
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=lambda: HyperbandPruner(name="hyperband"))
    budget: Budget = Field(default_factory=Budget)
    priority: int = Field(0, ge=-1000, le=1000, description="higher runs first when studies compete")

    @field_validator("space", mode="wrap")
    @classmethod
    def _space_by_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        # The built-in kinds search the built-in names, kind python its own: the task (validated first) decides.
        if isinstance(value, Space | FreeSpace):
            return value
        task = info.data.get("task")
        if task is None:
            return value  # the task is invalid: its own errors say why, a guess at the space's would mislead
        if task.kind == _PYTHON:
            return FreeSpace.model_validate(value)
        return Space.model_validate(value)

    @model_validator(mode="after")
    def _space_fits_the_kind(self) -> StudySpec:
        if self.task.kind != _PYTHON and isinstance(self.space, FreeSpace):
            raise ValueError(
                f"space: kind {self.task.kind} searches the built-in parameters, not a free space"
            )
        if self.task.kind == _PYTHON and isinstance(self.space, Space):
            raise ValueError("space: kind python needs its parameters: the names its entry point reads")
        return self

    @model_validator(mode="after")
    def _grid_needs_a_discrete_space(self) -> StudySpec:
        if self.sampler.name != "grid":
            return self
        if self.space.is_conditional():
            raise ValueError("space: the grid sampler does not take conditional parameters (when)")
        points = 1
        for name, param in self.space.params().items():
            values = param.discrete_values()
            if values is None:
                raise ValueError(
                    f"space.{name}: the grid sampler needs a discrete space; give this range a step or choices"
                )
            points *= len(values)
        if points > MAX_GRID_POINTS:
            raise ValueError(f"space: the grid has {points} points, more than {MAX_GRID_POINTS}")
        return self

    @model_validator(mode="after")
    def _encoder_learning_rate_needs_an_encoder_to_train(self) -> StudySpec:
        # Rejected rather than ignored: in head mode the encoder is frozen, and a searched
        # parameter that changes nothing would waste the sampler's effort on a flat dimension.
        if not isinstance(self.space, Space) or self.space.encoder_learning_rate is None:
            return self
        if self.task.kind == _MODULE:
            if self.task.freeze == FREEZE_MODES[0]:
                raise ValueError(
                    "space.encoder_learning_rate is the learning rate of the pretrained modules that train;"
                    " with freeze all-but-replaced none does"
                )
            return self
        if self.task.finetune == "head":
            raise ValueError(
                "space.encoder_learning_rate applies only to finetune last-k or full; the head mode's encoder is frozen"
            )
        return self

    @model_validator(mode="after")
    def _pruner_resources_fit(self) -> StudySpec:
        min_resource = getattr(self.pruner, "min_resource", None)
        max_epochs = self.space.max_epochs()
        if min_resource is not None and max_epochs is not None and min_resource > max_epochs:
            raise ValueError(
                f"pruner.min_resource ({min_resource}) exceeds the largest epochs value ({max_epochs})"
            )
        return self


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a YAML (or JSON) study spec file into a plain dict, ready for StudySpec.model_validate."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a study spec must be a mapping, got {type(data).__name__}")
    return data


PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def preset_path(name: str) -> Path:
    """The YAML file of a ready-made spec in studies/presets/."""
    return PRESETS_DIR / f"{name}.yaml"
