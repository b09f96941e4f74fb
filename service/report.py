"""A self-contained HTML report of a study, drawn with Optuna's plotly visualisations."""

from __future__ import annotations

import html
from collections.abc import Callable

import optuna
import plotly.graph_objects as go
from optuna import visualization
from optuna.trial import FrozenTrial

from studies import StudyProgress, StudyRepository
from studies.states import StudyState

PLOTS: tuple[tuple[str, Callable[[optuna.Study], go.Figure]], ...] = (
    ("Optimisation history", visualization.plot_optimization_history),
    ("Intermediate values (validation metric per epoch)", visualization.plot_intermediate_values),
    ("Hyperparameter importances", visualization.plot_param_importances),
    ("Parallel coordinates", visualization.plot_parallel_coordinate),
)

# plot_pareto_front draws two or three objectives.
MAX_PLOTTED_OBJECTIVES = 3


def render_report(repository: StudyRepository, progress: StudyProgress) -> str:
    """The report as one HTML page; plotly.js is inlined once, so it opens offline."""
    record = progress.record
    study = optuna.load_study(study_name=record.name, storage=repository.storage)
    sections: list[str] = []
    first = True
    front = repository.pareto_front(record) if record.spec.objective.several else []
    if record.spec.objective.several:
        # First on the page: a study of several objectives is read by its front.
        section, drawn = _pareto_section(study, front, record.spec.objective.names)
        sections.append(section)
        first = not drawn
    for title, plot in PLOTS:
        try:
            figure = plot(study)
        except (ValueError, RuntimeError) as error:
            # Importances need two finished trials, say; a young study still gets its report.
            sections.append(
                f"<h2>{html.escape(title)}</h2><p>Not available yet: {html.escape(str(error))}</p>"
            )
            continue
        figure.update_layout(title=None, height=460)
        body = figure.to_html(full_html=False, include_plotlyjs="inline" if first else False)
        first = False
        sections.append(f"<h2>{html.escape(title)}</h2>{body}")
    best = progress.best_trial
    best_rows = (
        "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in best.params.items()
        )
        if best is not None
        else ""
    )
    counts = ", ".join(f"{n} {state}" for state, n in progress.trial_counts.items() if n)
    best_text = (
        f"trial #{best.number}, {record.spec.objective.metric} {best.value:.6g}"
        if best is not None
        else "none yet"
    )
    best_line = f"<p>Best: {html.escape(best_text)}</p>"
    if record.spec.objective.several:
        best_line = f"<p>Pareto front: {len(front)} trial{'' if len(front) == 1 else 's'} (below)</p>"
    name = html.escape(record.name)
    reason = _state_reason(progress)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunefleet report: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:.2rem .8rem;border-bottom:1px solid #ddd}}</style>
</head><body>
<h1>Study {name}</h1>
<p>State <b>{html.escape(progress.state)}</b>; {html.escape(counts) or "no trials"}; budget {record.n_trials} trials.</p>
{reason}
{best_line}
<table>{best_rows}</table>
{"".join(sections)}
</body></html>
"""


def _state_reason(progress: StudyProgress) -> str:
    """Why the study is failed or stopped, as a paragraph; empty when it is neither."""
    reason = progress.record.state_reason
    if progress.state == StudyState.FAILED:
        # A failed study's page must say why, or its reader has only the trials to guess from.
        return f'<p class="state-reason">Failed: {html.escape(reason or "no reason was recorded")}</p>'
    if reason:
        return f'<p class="state-reason">Reason: {html.escape(reason)}</p>'
    return ""


def _pareto_section(
    study: optuna.Study, front: list[FrozenTrial], names: tuple[str, ...]
) -> tuple[str, bool]:
    """The front as a plot (every completed trial, the front's marked, infeasible ones apart) and a table of its
    trials; and whether the plot was drawn (it then carries plotly.js, being first on the page)."""
    title = "<h2>Pareto front</h2>"
    plotted = names[:MAX_PLOTTED_OBJECTIVES]
    note = ""
    if len(names) > len(plotted):
        # Optuna draws two or three axes: the table below has every objective.
        shown = html.escape(", ".join(plotted))
        note = f"<p>Plotted: {shown}, the first {len(plotted)} of {len(names)} objectives.</p>"
    try:
        figure = visualization.plot_pareto_front(
            study,
            target_names=list(plotted),
            targets=lambda trial: list((trial.values or [])[: len(plotted)]),
        )
    except (ValueError, RuntimeError) as error:
        plot, drawn = f"<p>Not available yet: {html.escape(str(error))}</p>", False
    else:
        figure.update_layout(title=None, height=520)
        plot = figure.to_html(full_html=False, include_plotlyjs="inline", div_id="pareto-front-plot")
        drawn = True
    if not front:
        return f"{title}{note}{plot}<p>No completed feasible trial yet.</p>", drawn
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ("trial", *names, "params"))
    rows = "".join(_front_row(trial, len(names)) for trial in front)
    return f'{title}{note}{plot}<table class="pareto-front"><tr>{header}</tr>{rows}</table>', drawn


def _front_row(trial: FrozenTrial, n_values: int) -> str:
    """One trial of the front: its number, its value of each objective, its parameters."""
    values = list(trial.values or [])[:n_values]
    params = ", ".join(f"{name}={value}" for name, value in trial.params.items())
    cells = [f"#{trial.number}", *(f"{value:.6g}" for value in values), params]
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"
