"""The python task kind: the user's own training function, named package.module:function, run on each trial."""

from __future__ import annotations

import importlib
import inspect
import logging
import shutil
import weakref
from collections.abc import Callable
from typing import Any

import safetensors.torch

from studies.spec import Task
from studies.states import StopReason
from worker.entrypoints import is_allowed
from worker.epochs import StopTraining, TrainResult
from worker.export import ARCHIVE_FORMAT
from worker.failures import TrialFailure
from worker.tasks.interface import ModelFiles, Progress, TaskHost, TrialContext
from worker.user_trial import Trial

log = logging.getLogger("tunefleet.worker")

# Under the worker's cache folder: one folder per trial for the function's own checkpoints.
CHECKPOINTS_FOLDER = "checkpoints"

EntryPoint = Callable[[Trial], object]
_MISSING = object()


class EntrypointError(TrialFailure):
    """The study's entry point cannot run on this worker: not allowed, not importable, not a function of one argument."""


class EntrypointRaised(TrialFailure):
    """The training function raised: the message is the exception's type and the last line of its message."""


def _not_allowed(entrypoint: str, allowed: tuple[str, ...]) -> str:
    package = entrypoint.partition(":")[0].split(".")[0]
    allows = f"it allows only {', '.join(allowed)}" if allowed else "it allows none"
    return (
        f"entry point {entrypoint} is not allowed on this worker ({allows}); its operator allows it with"
        f" `tunefleet worker --allow-entrypoint {package}` (or --allow-entrypoint {entrypoint}, this function"
        f" only), or TUNEFLEET_ALLOWED_ENTRYPOINTS={package}"
    )


def last_line(error: BaseException) -> str:
    """The exception's type and the last line of its message: ValueError: no column named label."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1].strip()}" if lines else type(error).__name__


def load_entrypoint(entrypoint: str, allowed: tuple[str, ...]) -> EntryPoint:
    """The function an entry point names, once the allow list admits it (nothing is imported before that)."""
    if not is_allowed(entrypoint, allowed):
        raise EntrypointError(_not_allowed(entrypoint, allowed))
    module_name, _, function_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            hint = ": is it installed on this worker, or on its PYTHONPATH?"
        else:
            # The module itself broke while importing: its operator needs the line, not only the message.
            log.warning("entry point %s: module %s does not import", entrypoint, module_name, exc_info=error)
            hint = ""
        raise EntrypointError(
            f"entry point {entrypoint}: module {module_name} does not import ({last_line(error)}){hint}"
        ) from None
    function = getattr(module, function_name, _MISSING)
    if function is _MISSING:
        raise EntrypointError(
            f"entry point {entrypoint}: module {module_name} has no attribute {function_name}"
        )
    if not callable(function):
        raise EntrypointError(
            f"entry point {entrypoint} is not a function: {module_name}.{function_name} is of type"
            f" {type(function).__name__}"
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some built-ins have none: let the call say whether it fits
        return function
    try:
        signature.bind(None)
    except TypeError:
        raise EntrypointError(
            f"entry point {entrypoint} must take one argument, the trial (def {function_name}(trial): ...),"
            f" but its signature is {function_name}{signature}"
        ) from None
    return function


def _is_out_of_memory(error: BaseException) -> bool:
    # The runner's own test, so the user's out-of-memory error takes the runner's path (PRUNED, infeasible);
    # imported when needed because the runner imports the task kinds.
    from worker.runner import is_out_of_memory

    return is_out_of_memory(error)


class PythonEntrypoint:
    """The python task kind: imports the study's entry point and calls it with a Trial, one trial at a time."""

    def __init__(self, host: TaskHost) -> None:
        self.host = host
        # The last trial's result, weakly (its weights are the runner's to let go), with save_model's label
        # names and config: model_files gets only the result.
        self._saved: tuple[weakref.ref[TrainResult], list[str], dict[str, Any]] | None = None

    def prepare(
        self, task: Task, *, progress: Progress | None = None, interrupt: Callable[[], None] | None = None
    ) -> None:
        """Nothing: the function loads its own data and model, once per trial or cached as it likes."""

    def run(self, task: Task, trial: TrialContext) -> TrainResult:
        """Call the entry point with a Trial; its reports reach the fleet, its failures end the trial with a reason."""
        entrypoint = task.entrypoint
        if entrypoint is None:
            raise EntrypointError("kind python needs task.entrypoint: package.module:function")
        function = load_entrypoint(entrypoint, self.host.allowed_entrypoints)
        folder = self.host.cache_dir / CHECKPOINTS_FOLDER / trial.study_name / str(trial.number)
        user = Trial(
            trial.params,
            number=trial.number,
            seed=trial.seed,
            device=trial.device,
            checkpoint_dir=folder,
            metric=trial.metric,
            keep=trial.keep,
            on_epoch=trial.report,
            stop_reason=trial.stop_reason,
        )
        handed_back = False
        try:
            try:
                returned = function(user)
            except (Exception, SystemExit) as error:
                ending = self._ending(entrypoint, trial, user, error)
                if ending is error:
                    raise
                raise ending from error
            result = user._finish(returned)
        except StopTraining as stop:
            handed_back = str(stop) == StopReason.WORKER_STOPPING
            if stop.result is not None:  # a stalled trial completes with it, and may keep its model
                self._saved = (weakref.ref(stop.result), *user._saved_model())
            raise
        finally:
            user._close()
            # Kept for a trial handed back, so its next run here can resume; gone with any other end.
            if not handed_back:
                shutil.rmtree(folder, ignore_errors=True)
        self._saved = (weakref.ref(result), *user._saved_model())
        return result

    def _ending(
        self, entrypoint: str, trial: TrialContext, user: Trial, error: BaseException
    ) -> BaseException:
        """What ends the trial when the function raised: the fleet's error, a stop, out of memory, or a failure."""
        overriding = user._overriding_error()
        if overriding is not None:
            return overriding
        if isinstance(error, StopTraining | TrialFailure):
            return error
        if isinstance(error, SystemExit):
            return EntrypointRaised(f"entry point {entrypoint} called sys.exit({error.code!r})")
        if _is_out_of_memory(error):
            return error
        log.error(
            "trial %d of %s: entry point %s raised",
            trial.number,
            trial.study_name,
            entrypoint,
            exc_info=error,
        )
        return EntrypointRaised(last_line(error))

    def model_files(self, task: Task, params: dict[str, Any], result: TrainResult) -> ModelFiles | None:
        """The weights the function saved (safetensors), its label names, and a config naming the entry point."""
        if not result.best_state:
            return None
        labels: list[str] = []
        model_config: dict[str, Any] = {}
        if self._saved is not None and self._saved[0]() is result:
            labels, model_config = self._saved[1], self._saved[2]
        weights = safetensors.torch.save(
            {name: tensor.contiguous() for name, tensor in result.best_state.items()},
            metadata={"format": "pt"},
        )
        config = {
            "format": ARCHIVE_FORMAT,
            "kind": "python",
            "entrypoint": task.entrypoint,
            # What the function said rebuilds its model (save_model's config).
            "model": model_config,
            "task": task.model_dump(mode="json"),
        }
        return ModelFiles(weights=weights, labels=labels, config=config)
