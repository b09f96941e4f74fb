"""Worker settings from TUNEFLEET_* environment variables, built at start-up and passed in."""

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from studies import DEFAULT_DATABASE_URL
from studies.artifacts import default_artifact_dir


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "tunefleet"


def _default_data_roots() -> tuple[Path, ...]:
    return (Path.cwd(),)


class WorkerSettings(BaseSettings):
    """How a worker reaches the store, where it caches features, and how it uses its device."""

    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    # A worker joins a store the service made: a SQLite file it does not find is a wrong folder or a typo,
    # not a store to start empty, unless the operator says so (--create-store).
    create_store: bool = Field(False, description="create the SQLite store file when it does not exist")
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    # A folder (shared with the service: NFS for many nodes) or s3://BUCKET: where best models go.
    artifact_dir: str = Field(default_factory=default_artifact_dir)
    poll_interval_s: float = Field(2.0, gt=0)
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    # Measured on a 2-core machine: a head trial ran 4-15x faster on one thread than on two under load.
    cpu_threads: int = Field(1, ge=1)
    pool_size: int = Field(2, ge=0, description="connections kept per process; 0: none (NullPool)")
    heartbeat_interval_s: float = Field(10.0, gt=0)
    grace_period_s: float = Field(60.0, gt=0, description="silence after which a worker is declared lost")
    # A preempted or lost worker's trial resumes where its last checkpoint left it: this bounds the work lost.
    checkpoint_interval_s: float = Field(
        60.0, ge=0, description="least seconds between a trial's checkpoints (0: every epoch)"
    )
    checkpoints: bool = Field(
        True, description="keep checkpoints in the artifact store to resume trials from"
    )
    # torch.load of a whole pickled module runs code from the file: an operator's decision, never a default.
    trust_pickled_models: bool = Field(
        False, description="load torch-module models saved as whole pickled modules"
    )
    # kind python runs these entry points only: a package (mypkg: everything under it) or one function
    # (mypkg.train:run), comma-separated. Empty: no kind python trial runs on this worker.
    allowed_entrypoints: Annotated[tuple[str, ...], NoDecode] = ()
    # The only folders a study's data files and local models may lie in (symlinks and .. resolved),
    # comma-separated; unset or empty: the folder the worker was started in.
    data_roots: Annotated[tuple[Path, ...], NoDecode] = Field(default_factory=_default_data_roots)

    @field_validator("allowed_entrypoints", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("data_roots", mode="before")
    @classmethod
    def _folders(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple) and not value:
            return _default_data_roots()
        return value
