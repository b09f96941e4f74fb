"""optuna-dashboard, served by a real `tunefleet serve`, renders a study's plots in headless Chromium without errors."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState
from playwright.sync_api import ConsoleMessage, Error, Page, Response, expect, sync_playwright

from tests.conftest import required_in_ci, tiny_spec

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# Headless and quiet: no sandbox (CI runs as root), and none of Chromium's own calls home, which fail offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A 2-core machine shared with other jobs: the bundle parse and first plot can take several seconds.
RENDER_TIMEOUT_MS = 30_000
STUDY_NAME = "browser-study"
TOKEN = "browser-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # ignored by a service without a token
N_STEPS = 4
# (final value, state) per trial: complete ones and pruned ones, each with per-step intermediate values.
TRIALS = [(0.9, TrialState.COMPLETE), (0.6, TrialState.COMPLETE), (1.4, TrialState.PRUNED)]
TRIALS += [(0.4, TrialState.COMPLETE), (1.2, TrialState.PRUNED)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chromium() -> str:
    """The system Chromium; `make install` puts it there, and CI must have it."""
    if shutil.which(CHROMIUM) is None:
        required_in_ci(
            f"{CHROMIUM} not found: install Debian's chromium package (make install does, as root)"
        )
    return CHROMIUM


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'x.db'}"


@pytest.fixture(params=["open", "token"])
def service(request: pytest.FixtureRequest, store_url: str, tmp_path: Path) -> Iterator[str]:
    """`tunefleet serve` as a real process on a free port, open or with a token for changes (the browser
    sends none: the dashboard's reads stay open); its log is in the test's tmp_path."""
    port = free_port()
    log_path = tmp_path / "service.log"
    env = {**os.environ, "TUNEFLEET_DATABASE_URL": store_url, "PYTHONUNBUFFERED": "1"}
    env.pop("TUNEFLEET_API_TOKEN", None)
    if request.param == "token":
        env["TUNEFLEET_API_TOKEN"] = TOKEN
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tunefleet", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("service did not start: " + log_path.read_text())
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def fill_study(service: str, store_url: str) -> int:
    """Create the study through the API, then record trials with plain Optuna; returns the dashboard's id."""
    created = httpx.post(f"{service}/v1/studies", json=tiny_spec(STUDY_NAME), headers=AUTH)
    assert created.status_code == 201, created.text
    study = optuna.load_study(study_name=STUDY_NAME, storage=store_url)
    space = {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(8, 64)}
    for final, state in TRIALS:
        trial = study.ask(space)
        for step in range(N_STEPS):
            trial.report(final + 0.5 / (step + 1), step)
        if state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, final)
    summaries = httpx.get(f"{service}/api/studies").json()["study_summaries"]
    return next(int(s["study_id"]) for s in summaries if s["study_name"] == STUDY_NAME)


def test_dashboard_renders_history_and_intermediate_values_without_console_errors(
    chromium: str, service: str, store_url: str, tmp_path: Path
) -> None:
    study_id = fill_study(service, store_url)
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console error: {message.text} ({message.location.get('url')})")

    def on_page_error(error: Error) -> None:
        problems.append(f"page error: {error}")

    def on_response(response: Response) -> None:
        # A failed /api or /static request shows as a blank plot, not always as a console error.
        if response.status >= 400:
            problems.append(f"HTTP {response.status} for {response.url}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page: Page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(RENDER_TIMEOUT_MS)
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            page.on("response", on_response)

            # Start where a person does: the study list at /, then click through to the study.
            page.goto(f"{service}/")
            page.get_by_text(STUDY_NAME, exact=False).first.click()
            page.wait_for_url(f"**/dashboard/studies/{study_id}")
            expect(page.locator("header")).to_contain_text(STUDY_NAME, timeout=RENDER_TIMEOUT_MS)

            history = page.locator("#plot-history")
            intermediate = page.locator("#graph-intermediate-values")
            expect(page.get_by_role("heading", name="History", exact=True)).to_be_visible()
            expect(page.get_by_role("heading", name="Intermediate values", exact=True)).to_be_visible()
            # Plotly draws into .main-svg; a trace per trial (intermediate values) and a point per
            # finished trial (history) prove the data reached the plots, not just empty axes.
            expect(history.locator(".main-svg").first).to_be_visible()
            n_complete = sum(state == TrialState.COMPLETE for _, state in TRIALS)
            expect(history.locator(".scatterlayer .point").nth(n_complete - 1)).to_be_attached()
            expect(intermediate.locator(".scatterlayer .trace")).to_have_count(
                len(TRIALS), timeout=RENDER_TIMEOUT_MS
            )
            expect(intermediate.locator(".legendtext")).to_contain_text(
                [f"trial #{n}" for n in range(len(TRIALS))]
            )
            page.screenshot(path=tmp_path / "dashboard-study.png", full_page=True)
        finally:
            browser.close()

    assert problems == []


MO_STUDY = "browser-pareto"
# (val_loss, train_seconds) per trial: the first three are the front, the last is dominated by the second.
MO_VALUES = [(0.9, 1.0), (0.5, 3.0), (0.3, 6.0), (0.8, 5.0)]


def test_dashboard_shows_a_study_of_several_objectives_front_by_metric_name(
    chromium: str, service: str, store_url: str, tmp_path: Path
) -> None:
    spec = tiny_spec(
        MO_STUDY,
        objective={
            "metrics": [
                {"name": "val_loss", "direction": "minimize"},
                {"name": "train_seconds", "direction": "minimize"},
            ]
        },
        pruner={"name": "none"},
    )
    created = httpx.post(f"{service}/v1/studies", json=spec, headers=AUTH)
    assert created.status_code == 201, created.text
    study = optuna.load_study(study_name=MO_STUDY, storage=store_url)
    for values in MO_VALUES:
        trial = study.ask({"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)})
        study.tell(trial, list(values))
    front = httpx.get(f"{service}/v1/studies/{MO_STUDY}/pareto").json()
    assert [t["number"] for t in front["trials"]] == [0, 1, 2]
    summaries = httpx.get(f"{service}/api/studies").json()["study_summaries"]
    study_id = next(int(s["study_id"]) for s in summaries if s["study_name"] == MO_STUDY)
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page: Page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(RENDER_TIMEOUT_MS)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.goto(f"{service}/dashboard/studies/{study_id}")
            expect(page.get_by_role("heading", name="Pareto Front", exact=True)).to_be_visible()
            pareto = page.locator("#graph-pareto-front")
            # A point per complete trial, on axes named by the metrics the spec gave, not 0 and 1.
            expect(pareto.locator(".scatterlayer .point")).to_have_count(len(MO_VALUES))
            expect(page.locator("body")).to_contain_text("train_seconds")
            expect(page.get_by_role("heading", name="Best Trials", exact=True)).to_be_visible()
            for number in (0, 1, 2):
                expect(page.get_by_role("heading", name=f"Trial {number}", exact=True)).to_be_visible()
            expect(page.get_by_role("heading", name="Trial 3", exact=True)).to_have_count(0)
            page.screenshot(path=tmp_path / "dashboard-pareto.png", full_page=True)
        finally:
            browser.close()

    assert problems == []
