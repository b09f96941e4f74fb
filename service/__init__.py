"""The tunefleet service: REST API, optuna-dashboard mount and health checks over the shared store."""

from service.app import create_app
from service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
