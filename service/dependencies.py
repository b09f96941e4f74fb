"""FastAPI dependencies: the repository built in create_app, reached through the request."""

from typing import Annotated

from fastapi import Depends, Request

from studies import StudyRepository


def _repository(request: Request) -> StudyRepository:
    repository: StudyRepository = request.app.state.repository
    return repository


Repository = Annotated[StudyRepository, Depends(_repository)]
