"""The vocabulary of a study spec: activations, optimizers, samplers, pruners."""

from typing import Final

ACTIVATION_NAMES: Final = ("relu", "gelu", "tanh", "leaky_relu", "elu", "sigmoid")
OPTIMIZER_NAMES: Final = ("sgd", "adagrad", "adam", "adamw")
SAMPLER_NAMES: Final = ("tpe", "random", "grid", "qmc", "cmaes", "gp")
PRUNER_NAMES: Final = ("none", "median", "percentile", "successive_halving", "hyperband")
STUDY_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
BUILTIN_MODELS: Final = ("all-MiniLM-L6-v2",)
BUILTIN_DATA: Final = ("bbc-news", "tweets-sentiment")
FINETUNE_MODES: Final = ("head", "last-k", "full")
DATA_FILE_SUFFIXES: Final = (".csv", ".jsonl", ".parquet")
