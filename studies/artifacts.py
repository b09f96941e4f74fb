"""The artifact store of fine-tuned models: where a new best trial's weights go, and how they come back.

Bytes and files only: the worker serialises the weights (safetensors), the service streams them out.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import optuna

# The user attribute that names a trial's model archive in the artifact store.
MODEL_ARTIFACT_ATTR = "model_artifact_id"
ARCHIVE_MIMETYPE = "application/zip"
WEIGHTS_FILE = "weights.safetensors"
PARAMS_FILE = "params.json"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
ARCHIVE_FILES = (WEIGHTS_FILE, PARAMS_FILE, LABELS_FILE, CONFIG_FILE)
# peft's own file names (peft.utils.SAFETENSORS_WEIGHTS_NAME and CONFIG_NAME): a finetune lora archive carries
# them too, so PeftModel.from_pretrained(encoder, folder) loads its unpacked folder.
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# The only members an archive may carry beyond ARCHIVE_FILES: extracting writes no other name.
EXTRA_FILES = (ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE)


class ArtifactStore(Protocol):
    """What tunefleet needs of an Optuna artifact store (file system, S3, GCS)."""

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """A readable stream of the artifact; ArtifactNotFound if there is none."""
        ...

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        """Store the stream's bytes under the artifact id."""
        ...

    def remove(self, artifact_id: str) -> None:
        """Delete the artifact."""
        ...


def default_artifact_dir() -> str:
    """The local default: a folder beside the user's data, shared by the service and workers of one host."""
    return str(Path.home() / ".local" / "share" / "tunefleet" / "artifacts")


def open_artifact_store(location: str) -> ArtifactStore:
    """The store a location names: `s3://BUCKET` (boto3, credentials from the environment) or a folder."""
    if location.startswith("s3://"):
        bucket = location.removeprefix("s3://").strip("/")
        if not bucket or "/" in bucket:
            raise ValueError(f"an S3 artifact location is s3://BUCKET (no prefix), got {location!r}")
        # Imported here: boto3 is optional, needed only by fleets that keep models in S3.
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(bucket)
    folder = Path(location).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(folder)


def write_model_archive(
    path: Path,
    *,
    weights: bytes,
    params: dict[str, Any],
    labels: list[str],
    config: dict[str, Any],
    extra: Mapping[str, bytes] | None = None,
) -> None:
    """Write the zip a user downloads: the weights, the trial's parameters, the label names and the config,
    and any extra files by name (only the names in EXTRA_FILES; ValueError for any other)."""
    extra = dict(extra or {})
    unknown = sorted(name for name in extra if name not in EXTRA_FILES)
    if unknown:
        raise ValueError(
            f"a model archive cannot carry {', '.join(map(repr, unknown))}: its extra files are"
            f" {', '.join(EXTRA_FILES)}"
        )

    def as_json(value: Any) -> str:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    with zipfile.ZipFile(path, "w") as archive:
        # Weights barely compress; storing them keeps saving and loading fast.
        archive.writestr(WEIGHTS_FILE, weights, compress_type=zipfile.ZIP_STORED)
        archive.writestr(PARAMS_FILE, as_json(params), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(LABELS_FILE, as_json(labels), compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr(CONFIG_FILE, as_json(config), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in extra.items():
            stored = name.endswith(".safetensors")
            archive.writestr(name, data, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)


def upload_model(store: ArtifactStore, trial: optuna.Trial, path: Path) -> str:
    """Upload a model archive as an artifact of the (running) trial; returns the artifact id."""
    return optuna.artifacts.upload_artifact(
        artifact_store=store,
        file_path=str(path),
        study_or_trial=trial,
        mimetype=ARCHIVE_MIMETYPE,
    )


def extract_model_archive(archive: Path, folder: Path) -> Path:
    """Unpack a downloaded model archive into folder (the four files every archive has, and those of EXTRA_FILES
    it carries, nothing else); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
        missing = [name for name in ARCHIVE_FILES if name not in names]
        if missing:
            raise ValueError(f"{archive} is not a tunefleet model archive: {', '.join(missing)} missing")
        # Only known flat names are written, so a crafted archive cannot write outside the folder.
        for name in (*ARCHIVE_FILES, *(name for name in EXTRA_FILES if name in names)):
            (folder / name).write_bytes(opened.read(name))
    return folder
