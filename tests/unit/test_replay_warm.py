"""Warm start on the replay benchmark: another task's recording becomes a completed study the replayed study names."""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.replay import record
from bench.replay.curves import data_file, load
from bench.replay.run import WARM_PRIOR, run_method, source_of
from bench.replay.surrogate import Surrogate
from bench.text_task import load_preset
from studies import StudyRepository, open_storage

TASK = "bbc-news-minilm"
SOURCE = "tweets-sentiment-minilm"


def test_a_replayed_study_runs_the_other_tasks_portfolio_first_then_samples_with_its_prior(
    tmp_path: Path,
) -> None:
    recording = load(data_file(TASK))
    surrogate = Surrogate(record.spec_of(TASK), recording.fitted()[:200])
    tweets = load(data_file(SOURCE)).curves[:40]
    source = source_of(SOURCE, load_preset(SOURCE), tweets)
    assert len(source.trials) == sum(c.failed is None for c in tweets)
    cost = statistics.mean(sum(c.cpu_s[: c.epochs]) for c in recording.curves[:200])
    run = run_method(load_preset(TASK), WARM_PRIOR, 0, 12 * cost, surrogate, tmp_path, (source,))
    assert run.trials >= 6

    storage = open_storage(f"sqlite:///{tmp_path / f'{WARM_PRIOR}-0.db'}")
    try:
        repository = StudyRepository(storage)
        # The source: a completed study of the recorded configurations and their recorded values.
        recorded = optuna.load_study(study_name=source.name, storage=storage).get_trials(deepcopy=False)
        assert [t.value for t in recorded] == [value for _, value in source.trials]
        assert {t.state for t in recorded} == {TrialState.COMPLETE}
        study = optuna.load_study(study_name=f"replay-{WARM_PRIOR}-0", storage=storage)
        warm = repository.warm_start_report(repository.get(study.study_name))
        assert warm is not None and warm.sources == [source.name]
        # The best quarter of 40, less those with a batch size this space lacks (256).
        assert 0 < warm.prior_configurations <= 10
        trials = study.get_trials(deepcopy=False)
        queued = [t.user_attrs.get("warm_start_from") for t in trials[: len(warm.trials)]]
        assert len(warm.trials) == 5 and all(str(q).startswith(f"{source.name}#") for q in queued)
        assert all("warm_start_from" not in t.user_attrs for t in trials[len(warm.trials) :])
    finally:
        storage.engine.dispose()
