"""optuna-dashboard on the same store, mounted at / (its front end hard-codes /api, /static, /dashboard)."""

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi


def mount_dashboard(app: FastAPI, storage: BaseStorage) -> None:
    """Mount the dashboard last, so every /v1 and health route wins over its catch-all."""
    app.mount("/", WSGIMiddleware(wsgi(storage)))  # type: ignore[arg-type]
