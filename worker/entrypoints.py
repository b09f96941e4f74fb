"""Which user code a worker's operator lets studies run: entry points (kind python) and model factories."""

from __future__ import annotations

from collections.abc import Iterable

from studies.spec import StudySpec


def is_allowed(entrypoint: str, allowed: Iterable[str]) -> bool:
    """Whether an operator's allow list admits package.module:function: a package or module prefix, or it exactly."""
    module = entrypoint.partition(":")[0]
    for entry in (item.strip() for item in allowed):
        if ":" in entry:
            if entry == entrypoint:
                return True
        elif entry and (module == entry or module.startswith(entry + ".")):
            return True
    return False


def user_code(spec: StudySpec) -> str | None:
    """The package.module:function a study's trials would import and run on a worker, if any."""
    if spec.task.kind == "python":
        return spec.task.entrypoint
    if spec.task.kind == "torch-module":
        return spec.task.factory
    return None
