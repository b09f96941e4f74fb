"""create_app(settings): the FastAPI application, built at start-up from settings passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import metrics
from service.auth import AuthMiddleware, TokenTable, load_tokens
from service.dashboard import mount_dashboard
from service.errors import install_error_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import build_registry
from service.openapi import install_openapi
from service.outage import watch_store
from service.reaper import ReaperThread
from service.routes import best_model, health, studies, workers
from service.settings import ServiceSettings
from studies import StudyRepository, open_storage
from studies.resilience import with_retry


def create_app(
    settings: ServiceSettings, repository: StudyRepository | None = None, tokens: TokenTable | None = None
) -> FastAPI:
    """Build the app on the store the settings name (or on a repository given by the caller)."""
    if tokens is None:
        tokens = load_tokens(settings)  # a bad token file stops start-up before the store is touched
    if repository is None:
        repository = with_retry(
            lambda: StudyRepository(open_storage(settings.database_url, pool_size=settings.pool_size)),
            what="open the store",
        )
    store = repository

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = ReaperThread(
            store,
            grace_s=settings.grace_period_s,
            interval_s=settings.heartbeat_interval_s,
            artifact_dir=settings.artifact_dir,
        )
        reaper.start()
        try:
            yield
        finally:
            reaper.done.set()
            reaper.reaper.release()

    app = FastAPI(
        lifespan=lifespan,
        title="tunefleet",
        version="0.1.0",
        description="Hyperparameter search for fine-tuning pretrained PyTorch models on a fleet of workers.",
    )
    app.state.repository = repository
    app.state.settings = settings
    # One log line when the store stops answering and one when it is back, not one per failed request.
    app.state.store_outage = watch_store(repository.engine)
    install_error_handlers(app)
    # Pure ASGI, outermost last: auth answers before a body is read, then the size limit; both cover
    # the dashboard mount too.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, tokens=tokens, protect_reads=settings.protect_reads)
    install_openapi(app, auth=bool(tokens), protect_reads=settings.protect_reads)
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(best_model.router)
    app.include_router(workers.router)
    app.state.metrics_registry = build_registry(repository, grace_s=settings.grace_period_s)
    app.include_router(metrics.router)
    if settings.mount_dashboard:
        mount_dashboard(app, repository.storage, app.state.store_outage)
    return app
