"""A small typed HTTP client for the tunefleet REST API, used by the CLI and importable by users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

# /healthz does no work: an answer slower than this is no answer.
HEALTH_TIMEOUT_S = 5.0


class ApiError(Exception):
    """The service answered with an error; `status` and `code` say which."""

    def __init__(self, status: int, detail: str, code: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


def _detail(body: Any) -> tuple[str, str]:
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"], str(body.get("code", "error"))
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        # FastAPI's validation shape: name each field and why, on one line.
        parts = []
        for item in body["detail"]:
            loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
            parts.append(f"{loc or 'body'}: {item.get('msg', 'invalid')}")
        return "; ".join(parts), "validation_error"
    return str(body), "error"


class TunefleetClient:
    """Talks to one tunefleet service."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> TunefleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            message = f"cannot reach the tunefleet service at {self._http.base_url}: {error}"
            raise ApiError(0, message, "unreachable") from error
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            detail, code = _detail(body)
            raise ApiError(response.status_code, detail, code)
        return response.json() if response.content else None  # 204 No Content has no body

    def create_study(self, spec: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/studies."""
        result: dict[str, Any] = self._call("POST", "/v1/studies", json=spec)
        return result

    def list_studies(self, *, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """GET /v1/studies: a page of studies, newest first."""
        result: dict[str, Any] = self._call("GET", "/v1/studies", params={"offset": offset, "limit": limit})
        return result

    def get_study(self, name: str) -> dict[str, Any]:
        """GET /v1/studies/{name}."""
        result: dict[str, Any] = self._call("GET", f"/v1/studies/{name}")
        return result

    def trials(
        self, name: str, *, state: str | None = None, offset: int = 0, limit: int = 100
    ) -> dict[str, Any]:
        """GET /v1/studies/{name}/trials."""
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        result: dict[str, Any] = self._call("GET", f"/v1/studies/{name}/trials", params=params)
        return result

    def enqueue_trials(self, name: str, param_sets: list[dict[str, Any]]) -> dict[str, Any]:
        """POST /v1/studies/{name}/trials: queue known parameter sets, run before the sampler's own."""
        body = {"trials": [{"params": params} for params in param_sets]}
        result: dict[str, Any] = self._call("POST", f"/v1/studies/{name}/trials", json=body)
        return result

    def pareto(self, name: str) -> dict[str, Any]:
        """GET /v1/studies/{name}/pareto: the Pareto front, values by metric."""
        result: dict[str, Any] = self._call("GET", f"/v1/studies/{name}/pareto")
        return result

    def stop_study(self, name: str) -> dict[str, Any]:
        """POST /v1/studies/{name}/stop."""
        result: dict[str, Any] = self._call("POST", f"/v1/studies/{name}/stop")
        return result

    def resume_study(self, name: str) -> dict[str, Any]:
        """POST /v1/studies/{name}/resume."""
        result: dict[str, Any] = self._call("POST", f"/v1/studies/{name}/resume")
        return result

    def delete_study(self, name: str) -> None:
        """DELETE /v1/studies/{name}: a stopped, failed or completed study, with its trials."""
        self._call("DELETE", f"/v1/studies/{name}")

    def workers(self, *, include_stopped: bool = False) -> list[dict[str, Any]]:
        """The fleet's workers, newest first (GET /v1/workers)."""
        params = {"include_stopped": "true"} if include_stopped else None
        workers: list[dict[str, Any]] = self._call("GET", "/v1/workers", params=params)
        return workers

    def report_html(self, name: str) -> str:
        """GET /v1/studies/{name}/report: a self-contained HTML page."""
        try:
            response = self._http.get(f"/v1/studies/{name}/report")
        except httpx.TransportError as error:
            message = f"cannot reach the tunefleet service at {self._http.base_url}: {error}"
            raise ApiError(0, message, "unreachable") from error
        if response.status_code >= 400:
            detail, code = _detail(response.json())
            raise ApiError(response.status_code, detail, code)
        return response.text

    def healthy(self, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
        """True when /healthz answers 200 within timeout_s."""
        # Not the client's 30 s: a port held by a program that accepts and never answers (not a tunefleet
        # service) kept `tunefleet demo` waiting a minute before it said anything.
        try:
            return self._http.get("/healthz", timeout=timeout_s).status_code == 200
        except httpx.TransportError:
            return False

    def download_best_model(
        self,
        name: str,
        dest_dir: str | Path,
        *,
        trial: int | None = None,
        prefer: str | None = None,
        bounds: dict[str, float] | None = None,
    ) -> Path:
        """GET /v1/studies/{name}/best-model, streamed to dest_dir and unpacked; returns the model folder.

        The archive stays beside the folder (dest_dir/NAME-trial-N-model.zip); the folder holds
        weights.safetensors, params.json, labels.json and config.json (worker.export.load_best_model reads it),
        and for a finetune lora trial also peft's adapter_model.safetensors and adapter_config.json
        (PeftModel.from_pretrained(encoder, folder) reads it).
        For a study of several objectives: trial names a trial of the Pareto front, or prefer (a metric) and
        bounds ({"max_val_loss": 0.15}) pick one.
        """
        query: dict[str, Any] = dict(bounds or {})
        if trial is not None:
            query["trial"] = trial
        if prefer is not None:
            query["prefer"] = prefer
        # Imported here: the CLI imports this module for every command, and only this one unzips.
        from studies.artifacts import extract_model_archive

        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", f"/v1/studies/{name}/best-model", params=query) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        body = response.json()
                    except ValueError:
                        body = response.text
                    detail, code = _detail(body)
                    raise ApiError(response.status_code, detail, code)
                number = response.headers.get("x-tunefleet-trial", "")
                # Only digits go into the file name: a server's header must not pick a path here.
                number = number if number.isdigit() else "best"
                archive = dest / f"{name}-trial-{number}-model.zip"
                partial = archive.with_name(archive.name + ".part")
                with partial.open("wb") as stream:
                    for chunk in response.iter_bytes():
                        stream.write(chunk)
                partial.replace(archive)
        except httpx.TransportError as error:
            message = f"cannot reach the tunefleet service at {self._http.base_url}: {error}"
            raise ApiError(0, message, "unreachable") from error
        return extract_model_archive(archive, dest / archive.name.removesuffix(".zip"))
