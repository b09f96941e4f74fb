"""The study spec (docs/architecture.md, section 3) as pydantic models: the one place a search space is defined."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
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
    EPOCH_METRICS,
    FINETUNE_MODES,
    FREEZE_MODES,
    LORA_TARGETS,
    MODEL_FILE_SUFFIXES,
    MODULE_PATH_PATTERN,
    MULTI_OBJECTIVE_SAMPLERS,
    OBJECTIVE_METRICS,
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

    `when` makes it conditional: sampled only when another parameter, drawn before it, has one of the
    given values or meets a comparison. The built-in space makes width and activation conditional on
    depth >= 1 unless the spec says otherwise.
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
        description="sample this parameter only when another one, defined before it, has one of these values"
        " ({optimizer: sgd}, {optimizer: [sgd, adagrad]}) or meets a comparison ({depth: {ge: 2}}); in the built-in"
        " space only width, activation (default {depth: {ge: 1}}) and encoder_learning_rate take one, and where"
        " the space searches finetune the lora parameters take {finetune: lora} (added for you)",
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

    def check_value(self, value: Any) -> Scalar:
        """The value as a trial of this parameter records it; ValueError saying why it cannot take the value."""
        shown = repr(value)[:100]
        if self.type in ("fixed", "categorical"):
            # The stored choice, not the value given: 32.0 given for the choice 32 records 32.
            allowed = [self.value] if self.type == "fixed" else list(self.choices or [])
            for choice in allowed:
                if choice is not None and _same(value, choice):
                    return choice
            if self.type == "fixed":
                raise ValueError(f"is fixed at {self.value!r}, got {shown}")
            raise ValueError(f"must be one of {', '.join(map(repr, allowed))}, got {shown}")
        integer = self.type == "int"
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            hint = ", which is text (YAML reads 1e-3 as text: write 1.0e-3)" if _numeric_text(value) else ""
            raise ValueError(f"must be {'an integer' if integer else 'a number'}, got {shown}{hint}")
        assert self.low is not None and self.high is not None
        scale = " on a log scale" if self.log else ""
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low} and {self.high}{scale}, got {shown}")
        if self.step is not None:
            # The tolerance Optuna's FloatDistribution uses for a value on its step grid.
            steps = (value - self.low) / self.step
            if (integer and (value - self.low) % self.step) or abs(steps - round(steps)) > 1e-8:
                raise ValueError(f"must be {self.low} plus a multiple of {self.step}, got {shown}")
        return float(value) if self.type == "float" else value

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest numeric value this parameter can take."""
        if self.type in ("float", "int"):
            assert self.low is not None and self.high is not None
            return float(self.low), float(self.high)
        values = self.discrete_values() or []
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        return min(numbers), max(numbers)


def _numeric_text(value: Any) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


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


# The built-in space's parameters, in sampling order: a condition names one before its own.
SPACE_PARAMS = (
    "learning_rate",
    "batch_size",
    "epochs",
    "depth",
    "width",
    "activation",
    "optimizer",
    "finetune",
    "encoder_learning_rate",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_targets",
)
# Every trial's training reads these, so none of them may be left undrawn by a condition.
_ALWAYS_NEEDED = frozenset({"learning_rate", "batch_size", "epochs", "depth", "optimizer", "finetune"})
# Only a head with hidden layers reads these: by default they are drawn only when depth is at least 1.
_HIDDEN_LAYER_PARAMS = ("width", "activation")
_HIDDEN_LAYERS_ONLY: dict[str, ConditionValue] = {"depth": Comparison(ge=1)}


# What a finetune lora study searches where its space leaves a lora parameter out: ranks 4 to 32, adapters
# scaled by 2 (peft's lora_alpha twice the rank, the usual choice), dropout 0.1 (peft's examples'), adapters on
# the attention layers. Written into the spec, so every worker draws the same and every trial records them.
LORA_DEFAULTS: dict[str, Any] = {
    "lora_rank": {"type": "int", "low": 4, "high": 32, "log": True},
    "lora_alpha": 2.0,
    "lora_dropout": 0.1,
    "lora_targets": "attention",
}
LORA_PARAMS = tuple(LORA_DEFAULTS)
# Where the space searches finetune, only a lora trial reads the lora parameters: they are drawn under this
# condition (written into the spec, as width's depth condition is), the one condition they may have.
_LORA_ONLY: dict[str, ConditionValue] = {"finetune": "lora"}
MAX_LORA_RANK = 1024
MAX_LORA_ALPHA = 64.0
MAX_LORA_DROPOUT = 0.9


class Space(_Strict):
    """The seven searchable hyperparameters of a fine-tuning trial, an optional eighth for the encoder, and
    finetune lora's four (filled in with LORA_DEFAULTS where a lora study leaves them out); optionally the
    fine-tune mode itself, each trial then drawing its own."""

    learning_rate: Param = _param({"type": "float", "low": 1e-4, "high": 1e-1, "log": True})
    batch_size: Param = _param({"type": "categorical", "choices": [16, 32, 64, 128]})
    epochs: Param = _param({"type": "int", "low": 1, "high": 10})
    depth: Param = _param({"type": "int", "low": 0, "high": 2})
    width: Param = _param({"type": "int", "low": 32, "high": 512, "log": True})
    activation: Param = _param({"type": "categorical", "choices": ["relu", "gelu", "tanh"]})
    optimizer: Param = _param({"type": "categorical", "choices": ["adam", "adamw", "sgd"]})
    finetune: Param | None = Field(
        None,
        description="kind text-classification: search the fine-tune mode itself (head, last-k, full, lora) instead of"
        " fixing task.finetune; encoder_learning_rate is then drawn only for the modes that train the encoder, and"
        " the lora parameters only for lora",
    )
    encoder_learning_rate: Param | None = Field(
        None,
        description="finetune last-k, full or lora only: the trained encoder blocks' (or lora's adapters')"
        " learning rate (absent: they train at learning_rate)",
    )
    lora_rank: Param | None = Field(
        None, description="finetune lora only: the rank of every adapter (absent: int 4 to 32, log)"
    )
    lora_alpha: Param | None = Field(
        None,
        description="finetune lora only: the adapters' scale as a multiple of lora_rank, so it means the same at"
        " every rank (peft's lora_alpha is lora_alpha times lora_rank; absent: 2.0)",
    )
    lora_dropout: Param | None = Field(
        None, description="finetune lora only: dropout on the adapters' input (absent: 0.1)"
    )
    lora_targets: Param | None = Field(
        None,
        description="finetune lora only: attention (query, key, value and the attention output) or"
        " attention+ffn (those and the feed-forward layers) (absent: attention)",
    )

    @field_validator("learning_rate", "encoder_learning_rate")
    @classmethod
    def _learning_rate(cls, p: Param | None, info: ValidationInfo) -> Param | None:
        if p is None:
            return None
        return _check_numeric(
            str(info.field_name), p, integer=False, minimum=0.0, maximum=10.0, strictly_above=True
        )

    @field_validator(*LORA_PARAMS)
    @classmethod
    def _lora(cls, p: Param | None, info: ValidationInfo) -> Param | None:
        if p is None:
            return None
        name = str(info.field_name)
        if p.when is not None and p.when != _LORA_ONLY:
            raise ValueError(
                f"{name}: every lora trial needs {name}, so it cannot have when (but {{finetune: lora}} where the"
                " space searches finetune, which is added for you)"
            )
        if name == "lora_rank":
            return _check_numeric(name, p, integer=True, minimum=1, maximum=MAX_LORA_RANK)
        if name == "lora_alpha":
            return _check_numeric(
                name, p, integer=False, minimum=0.0, maximum=MAX_LORA_ALPHA, strictly_above=True
            )
        if name == "lora_dropout":
            return _check_numeric(name, p, integer=False, minimum=0.0, maximum=MAX_LORA_DROPOUT)
        return _check_names(name, p, LORA_TARGETS)

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

    @field_validator("finetune")
    @classmethod
    def _finetune(cls, p: Param | None) -> Param | None:
        return None if p is None else _check_names("finetune", p, FINETUNE_MODES)

    @field_validator(*SPACE_PARAMS)
    @classmethod
    def _condition(cls, p: Param | None, info: ValidationInfo) -> Param | None:
        if p is None or p.when is None:
            return p
        name = str(info.field_name)
        if name in _ALWAYS_NEEDED:
            raise ValueError(
                f"{name}: every trial needs {name}, so it cannot have when;"
                " only width, activation and encoder_learning_rate can"
            )
        ((parent, wanted),) = p.when.items()
        before = SPACE_PARAMS[: SPACE_PARAMS.index(name)]
        if parent not in before:
            raise ValueError(
                f"{name}: when names {parent!r}, which is not a parameter defined before {name!r}"
                f" ({', '.join(before)})"
            )
        if name in _HIDDEN_LAYER_PARAMS and parent != "depth":
            raise ValueError(
                f"{name}: when may name only depth: every hidden layer needs its {name}, whatever else was drawn"
            )
        if parent in info.data and info.data[parent] is None:
            raise ValueError(f"{name}: when names {parent!r}, which this space does not set")
        parent_param = info.data.get(parent)
        if parent_param is None:
            return p  # the parent is invalid, and its own error says why
        _check_condition(name, parent, parent_param, wanted)
        if name in _HIDDEN_LAYER_PARAMS:
            missed = [
                d
                for d in parent_param.discrete_values() or []
                if isinstance(d, int) and d >= 1 and not p.applies({"depth": d})
            ]
            if missed:
                raise ValueError(
                    f"{name}: when must hold at every depth of 1 or more, as every hidden layer needs its {name};"
                    f" it does not at depth {missed[0]}"
                )
        return p

    @model_validator(mode="after")
    def _hidden_layer_params_need_hidden_layers(self) -> Space:
        # A linear head (depth 0) reads neither width nor activation: drawing them anyway would give
        # the sampler dimensions that change nothing, and the trial's record values that mean nothing.
        if self.depth.bounds()[0] >= 1:
            return self
        for name in _HIDDEN_LAYER_PARAMS:
            param: Param = getattr(self, name)
            if param.when is None:
                object.__setattr__(self, name, param.model_copy(update={"when": dict(_HIDDEN_LAYERS_ONLY)}))
        return self

    @model_validator(mode="after")
    def _encoder_learning_rate_only_where_the_encoder_trains(self) -> Space:
        # Searched beside finetune head, the encoder's learning rate is drawn only for the modes that train the
        # encoder: a head trial would record a value that changed nothing.
        encoder_rate = self.encoder_learning_rate
        if self.finetune is None or encoder_rate is None:
            return self
        modes = self.finetune_modes()
        trained = [mode for mode in modes if mode != "head"]
        # Every trial trains the encoder, or none does (the study spec says why that is refused).
        if "head" not in modes or not trained:
            return self
        if encoder_rate.when is None:
            when: dict[str, ConditionValue] = {"finetune": trained[0] if len(trained) == 1 else list(trained)}
            object.__setattr__(self, "encoder_learning_rate", encoder_rate.model_copy(update={"when": when}))
        elif "finetune" not in encoder_rate.when or encoder_rate.applies({"finetune": "head"}):
            shown = f"[{', '.join(trained)}]" if len(trained) > 1 else trained[0]
            raise ValueError(
                "encoder_learning_rate: the space searches finetune, and a head trial trains no encoder; leave"
                f" when out (it becomes {{finetune: {shown}}}) or make it name finetune modes other than head"
            )
        return self

    def finetune_modes(self) -> tuple[str, ...]:
        """The fine-tune modes the space searches, in its order; empty when it does not search finetune."""
        if self.finetune is None:
            return ()
        return tuple(str(mode) for mode in self.finetune.discrete_values() or [])

    def params(self) -> dict[str, Param]:
        """The parameters by name, in a stable order; an optional one left out is not there."""
        return {
            name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None
        }

    def is_conditional(self) -> bool:
        """Whether some parameter is sampled only under a condition (by default width and activation)."""
        return any(param.when is not None for param in self.params().values())

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # An absent optional parameter stays absent in the stored spec, as the user wrote it.
        return {k: v for k, v in handler(self).items() if v is not None}

    def max_epochs(self) -> int:
        """The most epochs any trial can run: the pruners' max resource."""
        return int(self.epochs.bounds()[1])


assert tuple(Space.model_fields) == SPACE_PARAMS

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


def grid_size(params: Mapping[str, Param], *, limit: int) -> int:
    """How many points the grid of these discrete parameters has, a conditional one counted only where its
    condition holds; past limit, some number above it."""
    names = list(params)
    # The parents that conditions from index i on read: only their values tell partial points apart.
    live: list[frozenset[str]] = [frozenset()] * (len(names) + 1)
    for i in range(len(names) - 1, -1, -1):
        live[i] = live[i + 1] | frozenset(params[names[i]].when or ())
    counted: dict[tuple[Any, ...], int] = {}

    def count(i: int, point: dict[str, Any]) -> int:
        if i == len(names):
            return 1
        key = (i, *((name, repr(point[name]) if name in point else None) for name in sorted(live[i])))
        if key in counted:
            return counted[key]
        name, param = names[i], params[names[i]]
        if not param.applies(point):
            total = count(i + 1, point)
        else:
            total = 0
            for value in param.discrete_values() or []:
                total += count(i + 1, {k: v for k, v in {**point, name: value}.items() if k in live[i + 1]})
                if total > limit:
                    break
        counted[key] = total
        return total

    return count(0, {})


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
        "head",
        description="head: frozen encoder | last-k: the top k encoder blocks train too | full | lora: low-rank"
        " adapters (peft) on the frozen encoder train too",
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
        # Without finetune, k may go with a space that searches last-k: the study spec checks it against the space.
        if self.finetune != "last-k" and self.k is not None and "finetune" in self.model_fields_set:
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


# Which way each metric is better: the validation metrics as they are, and every cost the smaller.
NATURAL_DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {
    name: "maximize" if name in ("val_accuracy", "val_macro_f1") else "minimize" for name in OBJECTIVE_METRICS
}
# What a worker measures of each kind's trials: the built-in kinds train a model it can time and size; the
# synthetic kind trains none; kind python reports one value of its own.
MEASURED_BY_KIND: dict[str, tuple[str, ...]] = {
    "text-classification": OBJECTIVE_METRICS,
    "torch-module": OBJECTIVE_METRICS,
    "synthetic": (*EPOCH_METRICS, "train_seconds"),
    "python": (),
}
MAX_CONSTRAINTS = 16
MAX_LATENCY_BATCH_SIZE = 256
_CONSTRAINT = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)


@dataclass(frozen=True)
class Constraint:
    """One objective constraint, `latency_ms <= 20`: a trial is feasible when its violation is 0 or less."""

    metric: str
    op: Literal["<=", ">="]
    bound: float

    @property
    def key(self) -> str:
        """The name the trial's constraint value is stored under, as Optuna's samplers read it."""
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, value: float) -> float:
        """How far a measured value is past the bound: positive when violated, as Optuna reads constraints."""
        return value - self.bound if self.op == "<=" else self.bound - value

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """A constraint from `METRIC <= NUMBER` or `METRIC >= NUMBER`; ValueError saying why not."""
        found = _CONSTRAINT.fullmatch(text)
        if found is None:
            raise ValueError(f"cannot read {text[:200]!r}: write METRIC <= NUMBER or METRIC >= NUMBER")
        metric, op, number = found.groups()
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(
                f"{text[:200]!r} names {metric!r}, which is not measured; known metrics: {', '.join(OBJECTIVE_METRICS)}"
            )
        bound = float(number)
        if not math.isfinite(bound):
            raise ValueError(f"{text[:200]!r}: the bound must be a finite number")
        return cls(metric=metric, op="<=" if op == "<=" else ">=", bound=bound)


def _constraint_text(text: str) -> str:
    Constraint.parse(text)
    return text


ConstraintText = Annotated[str, Field(max_length=256), AfterValidator(_constraint_text)]


class ObjectiveMetric(_Strict):
    """One of several objectives: a metric the worker measures, and which way is better."""

    name: str = Field(max_length=64, description=" | ".join(OBJECTIVE_METRICS))
    direction: Literal["minimize", "maximize"]

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in OBJECTIVE_METRICS:
            raise ValueError(f"unknown metric {v[:100]!r}; known: {', '.join(OBJECTIVE_METRICS)}")
        return v

    @model_validator(mode="after")
    def _direction_rewards_better_models(self) -> ObjectiveMetric:
        natural = NATURAL_DIRECTIONS[self.name]
        if self.name in EPOCH_METRICS and self.direction != natural:
            raise ValueError(
                f"direction {self.direction!r} would reward worse models: {self.name} is {natural}d"
            )
        return self


_SEVERAL_ONLY = ("constraints", "latency_batch_size")


class Objective(_Strict):
    """What a trial's value is and which way is better: one metric, or several (a Pareto front)."""

    metric: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None
    metrics: list[ObjectiveMetric] | None = Field(
        None,
        min_length=2,
        max_length=len(OBJECTIVE_METRICS),
        description="several objectives instead of metric: each {name, direction}; the study searches their"
        " Pareto front",
    )
    constraints: list[ConstraintText] | None = Field(
        None,
        max_length=MAX_CONSTRAINTS,
        description="several objectives only: METRIC <= NUMBER or METRIC >= NUMBER; a trial that breaks one"
        " is infeasible, ranked below every feasible trial and never on the front",
    )
    prune_on: str | None = Field(
        None,
        description="not supported: Optuna does not prune a study of several objectives (pruner must be none)",
    )
    latency_batch_size: int | None = Field(
        None,
        ge=1,
        le=MAX_LATENCY_BATCH_SIZE,
        description="several objectives only: validation inputs per timed call for latency_ms (default 1)",
    )
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

    @field_validator("prune_on")
    @classmethod
    def _no_pruning(cls, v: str | None) -> str | None:
        if v is not None:
            # Trial.report and Trial.should_prune raise NotImplementedError for several objectives, every
            # pruner ranks trials by one value, and TPE reads a pruned trial's per-epoch values by that one
            # direction: a study of several objectives cannot be pruned through Optuna.
            raise ValueError(
                "Optuna does not prune a study of several objectives (Trial.report and Trial.should_prune"
                " refuse them, and every pruner ranks trials by one value); remove prune_on, and leave the"
                " pruner out or set it to none"
            )
        return v

    @model_validator(mode="after")
    def _one_form(self) -> Objective:
        if self.metrics is None:
            stray = [name for name in _SEVERAL_ONLY if name in self.model_fields_set]
            if stray:
                raise ValueError(
                    f"{stray[0]} applies only to several objectives: list them under metrics"
                    " ({name, direction} each) instead of metric"
                )
            return self
        mixed = [name for name in ("metric", "direction") if name in self.model_fields_set]
        if mixed:
            raise ValueError(
                f"give metric (one objective) or metrics (several), not both: {mixed[0]} is set beside metrics;"
                " each of several metrics names its own direction"
            )
        names = [m.name for m in self.metrics]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"metrics name {repeated[0]} twice")
        if self.latency_batch_size is None:
            object.__setattr__(self, "latency_batch_size", 1)
        return self

    @model_validator(mode="after")
    def _direction_matches_metric(self) -> Objective:
        if self.metrics is not None:
            return self
        natural = NATURAL_DIRECTIONS[self.metric]
        if self.direction is None:
            object.__setattr__(self, "direction", natural)
        elif self.direction != natural:
            raise ValueError(
                f"direction {self.direction!r} would reward worse models: {self.metric} is {natural}d"
            )
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Each form stores only its own fields: a single-objective spec reads as it always did.
        if self.metrics is None:
            dropped = {"metrics", "prune_on", *_SEVERAL_ONLY}
        else:
            dropped = {"metric", "direction", "prune_on"}
        return {k: v for k, v in handler(self).items() if k not in dropped}

    @property
    def several(self) -> bool:
        """Whether the study has several objectives (a Pareto front) rather than one."""
        return self.metrics is not None

    @property
    def names(self) -> tuple[str, ...]:
        """The objectives' metrics, in the order of a trial's values."""
        return tuple(m.name for m in self.metrics) if self.metrics is not None else (self.metric,)

    @property
    def directions(self) -> tuple[Literal["minimize", "maximize"], ...]:
        """Which way each objective is better, in the order of a trial's values."""
        if self.metrics is not None:
            return tuple(m.direction for m in self.metrics)
        return (self.direction or NATURAL_DIRECTIONS[self.metric],)

    @property
    def epoch_metric(self) -> str:
        """The validation metric that picks a trial's kept epoch and drives patience: the objective's metric,
        or, of several, the first validation metric among them (val_loss when there is none)."""
        return next((name for name in self.names if name in EPOCH_METRICS), "val_loss")

    @property
    def epoch_direction(self) -> Literal["minimize", "maximize"]:
        """Which way the epoch metric is better."""
        return NATURAL_DIRECTIONS[self.epoch_metric]

    def parsed_constraints(self) -> list[Constraint]:
        """The constraints, read."""
        return [Constraint.parse(text) for text in self.constraints or []]

    def measured(self) -> tuple[str, ...]:
        """Every metric a trial's end must measure: the objectives', then the constraints' not among them."""
        names = list(self.names)
        for constraint in self.parsed_constraints():
            if constraint.metric not in names:
                names.append(constraint.metric)
        return tuple(names)


# How much TPE's choice among its candidates weighs their predicted seconds per epoch (studies/_optuna/cost_aware.py).
# On the built-in tasks seconds per epoch span two orders of magnitude across the space and good models
# come from both ends: taking the cheaper of two equally promising candidates reached random search's
# best loss sooner on BBC News (mixed on the tweets preset), and 1.0 did better than 0.5 (bench/NOTES.md, 1).
DEFAULT_COST_WEIGHT = 1.0
# Random trials before TPE and GP model the space (Optuna's own default); CMA-ES needs one.
DEFAULT_N_STARTUP_TRIALS = 10


class Sampler(_Strict):
    """Which Optuna sampler suggests the hyperparameters."""

    name: Literal["tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2"] = "tpe"
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
        if self.n_startup_trials is not None and self.name not in ("tpe", "gp", "cmaes", "nsga2"):
            raise ValueError(f"n_startup_trials does not apply to the {self.name} sampler")
        # NSGA-II's first generation is its random start, and every later one is as large.
        if self.name == "nsga2" and self.n_startup_trials is not None and self.n_startup_trials < 2:
            raise ValueError("n_startup_trials is nsga2's population size, at least 2")
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


class AshaPruner(_Strict):
    """ASHA with promotion: a trial pauses at each rung (min_resource * reduction_factor**k epochs) unless it is
    among the best 1/reduction_factor (at least the best one) of the trials that reached that rung, and resumes
    from its checkpoint, on any worker, once it is; paused trials still waiting when the budget is spent end
    pruned."""

    name: Literal["asha"]
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2, le=100)


Pruner = Annotated[
    NoPruner | MedianPruner | PercentilePruner | SuccessiveHalvingPruner | HyperbandPruner | AshaPruner,
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


SAME_MODEL = "same-model"
# tunefleet's own recorded studies of the built-in model (studies/portfolios/), for a first study of it.
BUILTIN_SOURCES = "builtin"
DEFAULT_PORTFOLIO = 5
MAX_PORTFOLIO = 50
# How strongly the sources' good configurations steer TPE before the study has trials of its own; learning from
# another task's recording, weight 1 did better than the portfolio alone (BENCHMARKS.md, 1h).
DEFAULT_PRIOR_WEIGHT = 1.0
MAX_WARM_START_STUDIES = 50


def _warm_start_source_kind(value: Any) -> str | None:
    if value in (SAME_MODEL, BUILTIN_SOURCES):
        return str(value)
    return "names" if isinstance(value, list) else None


WarmStartSources = Annotated[
    Annotated[Literal["same-model"], Tag(SAME_MODEL)]
    | Annotated[Literal["builtin"], Tag(BUILTIN_SOURCES)]
    | Annotated[
        list[Annotated[str, Field(pattern=STUDY_NAME_PATTERN, max_length=128)]],
        Field(min_length=1, max_length=MAX_WARM_START_STUDIES),
        Tag("names"),
    ],
    Discriminator(
        _warm_start_source_kind,
        custom_error_type="warm_start_studies",
        custom_error_message="studies must be a list of study names, same-model or builtin",
    ),
]


class WarmStart(_Strict):
    """Earlier studies to learn from: their best configurations, chosen to cover every one of them, are queued
    as the study's first trials (studies/warm_start.py)."""

    studies: WarmStartSources = Field(
        description="the studies' names; same-model: every completed study of the same task kind, model and"
        " fine-tune mode(s); builtin: tunefleet's own recorded studies of the built-in model (head, val_loss)"
    )
    portfolio: int = Field(
        DEFAULT_PORTFOLIO,
        ge=1,
        le=MAX_PORTFOLIO,
        description="how many configurations to queue first (at most the budget's n_trials)",
    )
    prior_weight: float = Field(
        DEFAULT_PRIOR_WEIGHT,
        ge=0,
        le=100,
        description="how strongly the source studies' best quarter of configurations steers the TPE sampler"
        " (0: not at all; 1, the default: half the first random start drawn near them); the pull halves by the"
        " study's 10th finished trial and keeps fading",
    )

    @field_validator("studies")
    @classmethod
    def _distinct(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            repeated = sorted({name for name in v if v.count(name) > 1})
            if repeated:
                raise ValueError(f"studies name {repeated[0]!r} twice")
        return v


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
    warm_start: WarmStart | None = Field(
        None,
        description="queue the best configurations of earlier studies as the first trials: {studies: [name, ...]"
        f" | same-model, portfolio: N (default {DEFAULT_PORTFOLIO})}}",
    )

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
    def _searched_finetune_fits_the_task(self) -> StudySpec:
        if not self.space_searches_finetune():
            if self.task.k is not None and self.task.finetune != "last-k":
                raise ValueError(f"task.k applies only to finetune last-k, not {self.task.finetune}")
            return self
        if self.task.kind != _TEXT:
            raise ValueError(f"space.finetune applies only to kind text-classification, not {self.task.kind}")
        # One place says which mode a trial runs: a task.finetune beside the space's would be ignored.
        if "finetune" in self.task.model_fields_set:
            raise ValueError("task.finetune: the space searches finetune; leave task.finetune out")
        modes = self.finetune_modes()
        if "last-k" in modes and self.task.k is None:
            raise ValueError(
                "task.k: space.finetune searches last-k, which needs k, the number of top encoder blocks to train"
            )
        if "last-k" not in modes and self.task.k is not None:
            raise ValueError(
                f"task.k applies only to finetune last-k, and space.finetune searches {', '.join(modes)}"
            )
        return self

    @model_validator(mode="after")
    def _lora_parameters_go_with_finetune_lora(self) -> StudySpec:
        # Before the grid check, which must see the defaults filled in here.
        if not isinstance(self.space, Space):
            return self
        searched = self.space_searches_finetune()
        lora = self.task.kind == _TEXT and "lora" in self.finetune_modes()
        given = [f"space.{name}" for name in LORA_PARAMS if getattr(self.space, name) is not None]
        if given and not lora:
            verb = "applies" if len(given) == 1 else "apply"
            if self.task.kind != _TEXT:
                mode = f"not kind {self.task.kind}"
            elif searched:
                mode = f"which space.finetune does not search ({', '.join(self.finetune_modes())})"
            else:
                mode = f"not finetune {self.task.finetune}"
            raise ValueError(f"{', '.join(given)} {verb} only to finetune lora, {mode}")
        if lora:
            update = {
                name: Param.model_validate(default)
                for name, default in LORA_DEFAULTS.items()
                if getattr(self.space, name) is None
            }
            if searched:
                # Drawn only for the lora trials, as width and activation are only for hidden layers.
                for name in LORA_PARAMS:
                    param: Param = update.get(name) or getattr(self.space, name)
                    if param.when is None:
                        update[name] = param.model_copy(update={"when": dict(_LORA_ONLY)})
            if update:
                object.__setattr__(self, "space", self.space.model_copy(update=update))
        return self

    @model_validator(mode="after")
    def _grid_needs_a_discrete_space(self) -> StudySpec:
        if self.sampler.name != "grid":
            return self
        params = self.space.params()
        for name, param in params.items():
            if param.discrete_values() is None:
                raise ValueError(
                    f"space.{name}: the grid sampler needs a discrete space; give this range a step or choices"
                )
        if grid_size(params, limit=MAX_GRID_POINTS) > MAX_GRID_POINTS:
            raise ValueError(f"space: the grid has more than {MAX_GRID_POINTS} points")
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
        if self.finetune_modes() == ("head",):
            raise ValueError(
                "space.encoder_learning_rate applies only to finetune last-k or full (or lora's adapters); the head"
                " mode's encoder is frozen"
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
        if isinstance(self.pruner, AshaPruner) and max_epochs is None:
            raise ValueError(
                "pruner asha pauses trials at epochs it counts up to the largest epochs value: kind python needs"
                " an `epochs` parameter with numbers in its space"
            )
        return self

    def rungs(self) -> list[int]:
        """The epochs at which an asha pruner pauses trials (none for any other pruner)."""
        if not isinstance(self.pruner, AshaPruner):
            return []
        max_epochs = self.space.max_epochs()
        if max_epochs is None:
            return []
        found: list[int] = []
        rung = self.pruner.min_resource
        while rung < max_epochs:
            found.append(rung)
            rung *= self.pruner.reduction_factor
        return found

    @model_validator(mode="after")
    def _several_objectives_fit(self) -> StudySpec:
        objective = self.objective
        if not objective.several:
            return self
        kind = self.task.kind
        if kind == _PYTHON:
            raise ValueError(
                "objective.metrics: kind python reports the one value its function returns; several objectives"
                " are measured for kinds text-classification and torch-module"
            )
        measured = MEASURED_BY_KIND[kind]
        for name in objective.measured():
            if name not in measured:
                raise ValueError(
                    f"objective: kind {kind} does not measure {name}; it measures {', '.join(measured)}"
                )
        if self.sampler.name not in MULTI_OBJECTIVE_SAMPLERS:
            raise ValueError(
                f"sampler.name: the {self.sampler.name} sampler takes one objective; for several use"
                f" {', '.join(MULTI_OBJECTIVE_SAMPLERS)}"
            )
        if self.sampler.cost_weight is not None:
            raise ValueError(
                "sampler.cost_weight: the cost-aware TPE weighs one objective; with several, TPE is Optuna's"
                " multi-objective TPE (make train_seconds an objective to search for cheap trials)"
            )
        if "pruner" not in self.model_fields_set:
            object.__setattr__(self, "pruner", NoPruner(name="none"))
        elif not isinstance(self.pruner, NoPruner):
            raise ValueError(
                f"pruner: Optuna does not prune a study of several objectives (Trial.report and"
                f" Trial.should_prune refuse them, and every pruner ranks trials by one value); set pruner"
                f" {{name: none}} or leave it out, not {self.pruner.name}"
            )
        return self

    @model_validator(mode="after")
    def _warm_start_fits(self) -> StudySpec:
        if self.warm_start is None:
            return self
        # The portfolio ranks configurations by one value each: a front of several has no such order.
        if self.objective.several:
            raise ValueError(
                "warm_start: a study of several objectives has no single best configuration to start from;"
                " warm start needs one objective"
            )
        if self.sampler.name == "grid":
            raise ValueError(
                "warm_start: the grid sampler runs each point once, and a queued trial would take a point's"
                " place; use another sampler"
            )
        if isinstance(self.warm_start.studies, list) and self.name in self.warm_start.studies:
            raise ValueError(f"warm_start.studies: a study cannot start from itself ({self.name!r})")
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("warm_start", 0) is None:
            # A spec without warm start stores and reads as it did before there was one.
            del data["warm_start"]
        if self.space_searches_finetune() and isinstance(data.get("task"), dict):
            # The task's default mode means nothing beside a searched one: stored, it would read as set.
            data["task"] = {k: v for k, v in data["task"].items() if k != "finetune"}
        return data

    def space_searches_finetune(self) -> bool:
        """Whether each trial draws its fine-tune mode from the space rather than running task.finetune."""
        return isinstance(self.space, Space) and self.space.finetune is not None

    def finetune_modes(self) -> tuple[str, ...]:
        """The fine-tune modes the study's trials run: the space's finetune values, or task.finetune alone."""
        if isinstance(self.space, Space) and self.space.finetune is not None:
            return self.space.finetune_modes()
        return (self.task.finetune,)


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
