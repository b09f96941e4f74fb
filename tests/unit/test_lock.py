"""requirements.lock pins every dependency pyproject.toml names, inside the range pyproject.toml allows."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def locked_versions() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"requirements.lock line is not a pin: {line!r}"
        pins[canonicalize_name(name)] = Version(version.split(";")[0].strip())
    return pins


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


def test_lock_pins_every_declared_dependency_within_its_range() -> None:
    pins = locked_versions()
    problems = []
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue  # TORCH_SPEC chooses the build: the CPU wheel in CI, a CUDA build on GPU nodes
        if name not in pins:
            problems.append(f"{requirement.name}: not in requirements.lock (run `make lock`)")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}: locked {pins[name]} is outside {requirement.specifier}")
    assert not problems, "\n".join(problems)


def test_lock_leaves_torch_and_its_cuda_libraries_to_torch_spec() -> None:
    # A pinned CUDA library would hold a GPU node's torch to the build the lock was made against.
    pins = locked_versions()
    pinned = sorted(
        name for name in pins if name == "torch" or name == "triton" or name.startswith("nvidia-")
    )
    assert not pinned, pinned


def test_lock_names_no_package_index_of_the_machine_that_made_it() -> None:
    text = (ROOT / "requirements.lock").read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text and "--find-links" not in text
