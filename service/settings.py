"""Service settings from TUNEFLEET_* environment variables, built at start-up and passed in."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from studies import DEFAULT_DATABASE_URL


class ServiceSettings(BaseSettings):
    """How the service reaches the store and where it listens."""

    model_config = SettingsConfigDict(env_prefix="TUNEFLEET_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    pool_size: int = 4
    mount_dashboard: bool = True
    heartbeat_interval_s: float = Field(10.0, gt=0, description="how often the service reaps lost workers")
    grace_period_s: float = Field(60.0, gt=0, description="silence after which a worker is declared lost")
