"""The vocabulary of a study spec: task kinds, activations, optimizers, samplers, pruners."""

from typing import Final

ACTIVATION_NAMES: Final = ("relu", "gelu", "tanh", "leaky_relu", "elu", "sigmoid")
OPTIMIZER_NAMES: Final = ("sgd", "adagrad", "adam", "adamw")
SAMPLER_NAMES: Final = ("tpe", "random", "grid", "qmc", "cmaes", "gp", "nsga2")
# Samplers that rank trials by several objectives (a Pareto front) as well as by one.
MULTI_OBJECTIVE_SAMPLERS: Final = ("tpe", "nsga2", "random", "grid", "qmc")
# What a study's objective can name: the validation metrics every epoch reports, and what the worker measures
# of a trial's model when it ends (trainable parameters, the downloaded files' size, inference latency, and
# the seconds spent training).
EPOCH_METRICS: Final = ("val_loss", "val_accuracy", "val_macro_f1")
OBJECTIVE_METRICS: Final = (
    *EPOCH_METRICS,
    "params_trainable",
    "model_size_mb",
    "latency_ms",
    "train_seconds",
)
PRUNER_NAMES: Final = ("none", "median", "percentile", "successive_halving", "hyperband", "asha")
STUDY_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
BUILTIN_MODELS: Final = ("all-MiniLM-L6-v2",)
# Built-in torch-module models: a small MLP text classifier over hashed text, pretrained once per node on a
# built-in corpus and saved with torch.save(model), as a user's own pretrained_model.pth would be.
BUILTIN_MODULES: Final = ("mlp-tweets-sentiment",)
BUILTIN_DATA: Final = ("bbc-news", "tweets-sentiment")
FINETUNE_MODES: Final = ("head", "last-k", "full", "lora")
# finetune lora: which of the encoder's layers get low-rank adapters (worker/lora.py resolves them per model).
LORA_TARGETS: Final = ("attention", "attention+ffn")
DATA_FILE_SUFFIXES: Final = (".csv", ".jsonl", ".parquet")
TASK_KIND_NAMES: Final = ("text-classification", "synthetic", "torch-module", "python")
# torch-module: which of the pretrained model's modules train beside the new head (or a list of module paths).
FREEZE_MODES: Final = ("all-but-replaced", "none")
# Files a text-classification model (a Hugging Face folder) cannot be: they are torch-module models.
MODEL_FILE_SUFFIXES: Final = (".pt", ".pth", ".ts", ".torchscript", ".pkl", ".bin", ".safetensors", ".onnx")
# package.module:function, as entry points and model factories are named.
ENTRYPOINT_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
# A submodule's dotted path in a model, indexes allowed: classifier.1, encoder.layer.11.output
MODULE_PATH_PATTERN: Final = r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$"
# A parameter name of a kind python space: what the user's code reads from trial.params.
PARAM_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
