"""create_app(settings): the FastAPI application, built at start-up from settings passed in."""

from __future__ import annotations

from fastapi import FastAPI

from service.dashboard import mount_dashboard
from service.errors import install_error_handlers
from service.routes import health, studies
from service.settings import ServiceSettings
from studies import StudyRepository, open_storage


def create_app(settings: ServiceSettings, repository: StudyRepository | None = None) -> FastAPI:
    """Build the app on the store the settings name (or on a repository given by the caller)."""
    if repository is None:
        repository = StudyRepository(open_storage(settings.database_url, pool_size=settings.pool_size))
    app = FastAPI(
        title="tunefleet",
        version="0.1.0",
        description="Hyperparameter search for fine-tuning pretrained PyTorch models on a fleet of workers.",
    )
    app.state.repository = repository
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(studies.router)
    if settings.mount_dashboard:
        mount_dashboard(app, repository.storage)
    return app
