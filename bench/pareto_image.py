"""The README's Pareto-front picture: a finished study's loss against each of its costs, drawn by Chromium as PNG."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import optuna
from playwright.sync_api import sync_playwright

from studies import StudyRepository, open_storage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
PANEL_WIDTH, PANEL_HEIGHT = 520, 420


def panels(study: optuna.Study, names: Sequence[str]) -> list[str]:
    """One plot per cost: the first objective (the loss) against it, every trial, the front marked."""
    figures = []
    for i, name in enumerate(names[1:], start=1):

        def against(trial: optuna.trial.FrozenTrial, i: int = i) -> Sequence[float]:
            return (trial.values[0], trial.values[i])

        figure = optuna.visualization.plot_pareto_front(study, targets=against, target_names=[names[0], name])
        figure.update_layout(
            width=PANEL_WIDTH, height=PANEL_HEIGHT, title=f"{names[0]} against {name}", showlegend=i == 1
        )
        figures.append(figure.to_html(full_html=False, include_plotlyjs="inline" if i == 1 else False))
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True, help="the store URL the study ran on")
    parser.add_argument("--study", default="bbc-news-minilm-pareto")
    parser.add_argument("--out", type=Path, default=Path("docs/images/pareto-front.png"))
    args = parser.parse_args(argv)
    repository = StudyRepository(open_storage(args.store))
    names = repository.get(args.study).spec.objective.names
    study = optuna.load_study(study_name=args.study, storage=repository.storage)
    html = "".join(f'<div style="display:inline-block">{panel}</div>' for panel in panels(study, names))
    with tempfile.TemporaryDirectory() as folder, sync_playwright() as playwright:
        page_file = Path(folder) / "front.html"
        page_file.write_text(f'<html><body style="margin:0;white-space:nowrap">{html}</body></html>')
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": PANEL_WIDTH * (len(names) - 1), "height": PANEL_HEIGHT})
        page.goto(page_file.as_uri())
        page.locator(".main-svg").first.wait_for(timeout=30_000)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
