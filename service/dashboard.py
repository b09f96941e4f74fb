"""optuna-dashboard on the same store, mounted at / (its front end hard-codes /api, /static, /dashboard)."""

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI
from optuna.storages import BaseStorage
from optuna_dashboard import wsgi
from starlette.routing import BaseRoute, Match, Mount, Router, get_route_path
from starlette.types import Scope

# Our REST prefix: a path under it never reaches the dashboard, even one no route of ours matches.
API_PREFIX = "/v1"


class _DashboardMount(Mount):
    """The dashboard's catch-all at /, minus the paths the service owns.

    A plain Mount("/") matches every path, so a wrong method on one of our routes (PUT /v1/studies)
    or an unknown /v1 path would get the dashboard's HTML 404 instead of our JSON 405 or 404.
    """

    def __init__(self, router: Router, app: WSGIMiddleware) -> None:
        super().__init__("/", app=app)  # type: ignore[arg-type]
        self._router = router

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            path = get_route_path(scope)
            if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
                return Match.NONE, {}
            siblings: list[BaseRoute] = list(self._router.routes)
            for route in siblings:
                if route is self:
                    break
                if route.matches(scope)[0] is not Match.NONE:
                    return Match.NONE, {}  # one of ours, with another method: the router answers 405
        return super().matches(scope)


def mount_dashboard(app: FastAPI, storage: BaseStorage) -> None:
    """Mount the dashboard last, so every /v1 and health route wins over its catch-all."""
    app.router.routes.append(_DashboardMount(app.router, WSGIMiddleware(wsgi(storage))))
