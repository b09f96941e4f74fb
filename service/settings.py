"""Service settings from TUNEFLEET_* environment variables, built at start-up and passed in."""

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from studies import DEFAULT_DATABASE_URL
from studies.artifacts import default_artifact_dir


class ServiceSettings(BaseSettings):
    """How the service reaches the store and where it listens."""

    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535, description="0: any free port")
    pool_size: int = 4
    mount_dashboard: bool = True
    heartbeat_interval_s: float = Field(10.0, gt=0, description="how often the service reaps lost workers")
    grace_period_s: float = Field(60.0, gt=0, description="silence after which a worker is declared lost")
    artifact_dir: str = Field(
        default_factory=default_artifact_dir, description="the workers' model store: a folder or s3://BUCKET"
    )
    api_token: SecretStr | None = Field(None, description="bearer token for mutating routes (read-write)")
    api_tokens_file: Path | None = Field(
        None, description="a file of tokens, one a line: TOKEN or rw:TOKEN (read-write), ro:TOKEN (read-only)"
    )
    protect_reads: bool = Field(False, description="reads need a token too (all but /healthz and /readyz)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="larger request bodies get 413")
