"""/v1/studies: create, list, read and control studies, read their trials and enqueue known ones."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from optuna.trial import TrialState

from service.artifact_stores import discard
from service.dependencies import Repository
from service.report import render_report
from service.schemas import (
    EnqueuedRead,
    EnqueueRequest,
    ErrorRead,
    ParetoRead,
    StudyName,
    StudyPage,
    StudyRead,
    TrialNumber,
    TrialPage,
    TrialRead,
)
from studies import StudyRecord, StudyRepository, StudySpec
from studies.errors import ParamsRejected, WarmStartRejected
from studies.records import StudySummary
from studies.states import StudyState
from studies.warm_start import WARM_START_STUDY_ATTR, WarmStartReport

router = APIRouter(prefix="/v1/studies", tags=["studies"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorRead, "description": "no such study"}}
TrialStateName = Literal["running", "complete", "pruned", "fail", "waiting"]


def _study_read(repository: StudyRepository, record: StudyRecord) -> StudyRead:
    front = len(repository.pareto_front(record)) if record.spec.objective.several else None
    return StudyRead.from_progress(
        repository.progress(record),
        repository.data_warnings(record),
        front,
        repository.warm_start_report(record),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses={409: {"model": ErrorRead, "description": "the name is taken"}},
)
def create_study(spec: StudySpec, repository: Repository, response: Response) -> StudyRead:
    """Create a study from a spec; workers start pulling its trials at once.

    With `warm_start`, the chosen configurations of the earlier studies are queued first; a named study that
    cannot be learnt from is a 422 whose `loc` names it (`["body", "warm_start", "studies", 0]`).
    """
    try:
        record = repository.create(spec)
    except WarmStartRejected as rejected:
        raise RequestValidationError(
            [
                {
                    "type": "invalid_warm_start",
                    "loc": ("body", "warm_start", "studies", *(() if index is None else (index,))),
                    "msg": why,
                }
                for index, why in rejected.problems
            ]
        ) from None
    response.headers["Location"] = f"/v1/studies/{record.name}"
    return _study_read(repository, record)


def warm_start_of(summary: StudySummary) -> WarmStartReport | None:
    """What warm start did for a listed study, from the attributes its summary read (None without warm_start)."""
    stored = summary.study_attrs.get(WARM_START_STUDY_ATTR)
    if summary.progress.record.spec.warm_start is None or not isinstance(stored, dict):
        return None
    return WarmStartReport.from_json(stored)


@router.get("", response_model=StudyPage)
def list_studies(
    repository: Repository,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> StudyPage:
    """The studies with their state, trial counts and best value, newest first, a page at a time."""
    total, records = repository.study_page(offset=offset, limit=limit)
    # The whole page in a fixed number of queries: a study at a time was a query per study for its counts,
    # its warnings and its best trial, and every trial of a study of several objectives for its front.
    return StudyPage(
        total=total,
        offset=offset,
        limit=limit,
        items=[
            StudyRead.from_progress(
                summary.progress,
                summary.warnings,
                summary.pareto_front_size,
                warm_start_of(summary),
            )
            for summary in repository.summaries(records, study_attrs=[WARM_START_STUDY_ATTR])
        ],
    )


@router.get("/{study_name}", response_model=StudyRead, responses=NOT_FOUND)
def get_study(study_name: StudyName, repository: Repository) -> StudyRead:
    """One study: spec, state, progress and best trial."""
    return _study_read(repository, repository.get(study_name))


@router.delete(
    "/{study_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **NOT_FOUND,
        409: {
            "model": ErrorRead,
            "description": "the study is running, or a trial of it is (invalid_study_state)",
        },
    },
)
def delete_study(study_name: StudyName, repository: Repository, request: Request) -> Response:
    """Delete a stopped, failed or completed study with its trials and the checkpoints they held; 409 while it or
    a trial of it runs."""
    for checkpoint in repository.delete(study_name):
        discard(request.app.state.settings.artifact_dir, checkpoint.artifact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{study_name}/stop", response_model=StudyRead, responses=NOT_FOUND)
def stop_study(study_name: StudyName, repository: Repository) -> StudyRead:
    """Stop claiming new trials; running trials stop at their next epoch boundary."""
    repository.get(study_name)
    return _study_read(repository, repository.set_state(study_name, StudyState.STOPPED, "stopped by user"))


@router.post("/{study_name}/resume", response_model=StudyRead, responses=NOT_FOUND)
def resume_study(study_name: StudyName, repository: Repository) -> StudyRead:
    """Reopen a stopped study for claims."""
    repository.get(study_name)
    return _study_read(repository, repository.set_state(study_name, StudyState.RUNNING))


@router.get("/{study_name}/trials", response_model=TrialPage, responses=NOT_FOUND)
def list_trials(
    study_name: StudyName,
    repository: Repository,
    state: Annotated[TrialStateName | None, Query(description="only trials in this state")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TrialPage:
    """The study's trials in number order, a page at a time."""
    record = repository.get(study_name)
    states = [TrialState[state.upper()]] if state else None
    total, trials = repository.trials(record, states=states, offset=offset, limit=limit)
    return TrialPage(
        total=total, offset=offset, limit=limit, items=[TrialRead.from_frozen(t) for t in trials]
    )


@router.post(
    "/{study_name}/trials",
    status_code=status.HTTP_201_CREATED,
    response_model=EnqueuedRead,
    responses={
        **NOT_FOUND,
        409: {
            "model": ErrorRead,
            "description": "more sets than the budget has slots left (budget_exceeded, the detail says how"
            " many), a completed or failed study (study_finished), a grid study (grid_study)",
        },
    },
)
def enqueue_trials(study_name: StudyName, body: EnqueueRequest, repository: Repository) -> EnqueuedRead:
    """Queue known configurations; claims take them before drawing new ones, each in a slot of the budget.

    A stopped study takes them too, to run on resume. A set that does not fit the space is a 422 whose
    `loc` names the set and the parameter (`["body", "trials", 0, "params", "learning_rate"]`), and then
    nothing is queued.
    """
    try:
        enqueued = repository.enqueue(study_name, [trial.params for trial in body.trials])
    except ParamsRejected as rejected:
        raise RequestValidationError(
            [
                {
                    "type": "invalid_param",
                    "loc": ("body", "trials", problem.index, "params", problem.name),
                    "msg": problem.message,
                    "input": body.trials[problem.index].params.get(problem.name),
                }
                for problem in rejected.problems
            ]
        ) from None
    return EnqueuedRead(study_name=study_name, numbers=enqueued.numbers, slots_left=enqueued.slots_left)


@router.get(
    "/{study_name}/report",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}}, **NOT_FOUND},
)
def study_report(study_name: StudyName, repository: Repository) -> HTMLResponse:
    """A self-contained HTML report: history, intermediate values, importances, parallel coordinates."""
    progress = repository.progress(repository.get(study_name))
    return HTMLResponse(render_report(repository, progress))


@router.get(
    "/{study_name}/trials/{number}",
    response_model=TrialRead,
    responses={404: {"model": ErrorRead, "description": "no such study or trial"}},
)
def get_trial(study_name: StudyName, number: TrialNumber, repository: Repository) -> TrialRead:
    """One trial: parameters, per-epoch values, outcome and worker."""
    return TrialRead.from_frozen(repository.trial(repository.get(study_name), number))


@router.get("/{study_name}/pareto", response_model=ParetoRead, responses=NOT_FOUND)
def pareto_front(study_name: StudyName, repository: Repository) -> ParetoRead:
    """The Pareto front: completed trials that break no constraint and that no such trial beats in every
    objective, with their values by metric (for one objective: its best trial)."""
    record = repository.get(study_name)
    return ParetoRead.from_front(record, repository.pareto_front(record))
