"""A process keeps what it loaded per study (spec, sampler, pruner, Optuna study, paused trials) only while it needs
it, so a fleet or a service that lives through many studies does not hold them all."""

from __future__ import annotations

import pytest

from studies import StudyRepository, StudySpec, WorkerIdentity, catalog
from tests.conftest import tiny_spec

WORKER = WorkerIdentity(host="test", pid=1, device="cpu")
ASHA = {"name": "asha", "min_resource": 1, "reduction_factor": 3}
SPACE = {"epochs": {"type": "int", "low": 3, "high": 3}, "width": {"type": "int", "low": 8, "high": 64}}


def kept_names(repository: StudyRepository) -> dict[str, set[str]]:
    return {
        "specs": {name for name, _ in repository._specs},
        "samplers": {name for name, _ in repository._samplers},
        "pruners": {name for name, _ in repository._pruners},
        "studies": set(repository._studies),
    }


def test_a_worker_drops_what_it_kept_of_a_study_it_can_no_longer_claim_from(
    repository: StudyRepository, study_name: str
) -> None:
    first, second = f"{study_name}-a", f"{study_name}-b"
    for name in (first, second):
        spec = tiny_spec(name, space=SPACE, pruner=ASHA, budget={"n_trials": 3})
        repository.create(StudySpec.model_validate(spec))
    first_id = repository.get(first).optuna_study_id
    # The first study to its end, under a pruner that pauses trials at its rungs (kept by the store's reader).
    while (claim := repository.claim(WORKER, study_names=[first])) is not None:
        assert first_id in repository.storage._paused
        for epoch in range(1, 4):
            repository.report(claim, 1.0 / (claim.trial.number + 1) + 1.0 / epoch, epoch)
        repository.complete(claim, 1.0 / (claim.trial.number + 1), {})
        assert kept_names(repository)["samplers"] == {first}, "dropped while it was still runnable"
    # Its budget spent and nothing paused, the claim that found nothing to do let it go.
    assert kept_names(repository) == {key: set() for key in ("specs", "samplers", "pruners", "studies")}
    assert first_id not in repository.storage._paused

    # (Named: the shared PostgreSQL test store holds other tests' studies.)
    claim = repository.claim(WORKER, study_names=[first, second])
    assert claim is not None and claim.study_name == second
    assert kept_names(repository) == {key: {second} for key in ("specs", "samplers", "pruners", "studies")}
    repository.complete(claim, 0.5, {})


def test_a_process_keeps_the_most_recently_used_studies_only(
    repository: StudyRepository, study_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalog, "KEPT_STUDIES", 3)
    names = [f"{study_name}-{index}" for index in range(5)]
    for name in names:
        repository.create(StudySpec.model_validate(tiny_spec(name)))
    loaded = {}
    for name in names[:3]:
        loaded[name] = repository._study(repository.get(name))
    assert repository._study(repository.get(names[0])) is loaded[names[0]], "a kept study is loaded once"
    for name in names[3:]:
        repository._study(repository.get(name))
    # names[0] was used again after names[1] and names[2]: those two went first.
    assert list(repository._studies) == [names[0], names[3], names[4]]
