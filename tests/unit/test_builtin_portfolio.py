"""The built-in warm-start sources are what the committed recordings give, and fit the built-in study's space."""

from __future__ import annotations

import json

from bench.replay.curves import DATA_DIR
from bench.replay.portfolio import HEAD_TASKS, portfolio_of
from studies import StudySpec, load_spec_file, preset_path
from studies.warm_start import BUILTIN_PORTFOLIO_FILE, builtin_sources, fit_to_space


def test_the_shipped_file_is_regenerated_from_the_recordings() -> None:
    # A recording that grew without `python -m bench.replay.portfolio` would leave users the older sources.
    shipped = json.loads(BUILTIN_PORTFOLIO_FILE.read_text(encoding="utf-8"))
    assert shipped == json.loads(json.dumps(portfolio_of(HEAD_TASKS, DATA_DIR)))


def test_each_recorded_study_teaches_the_builtin_study_its_best_configurations_first() -> None:
    spec = StudySpec.model_validate(
        {**load_spec_file(preset_path("bbc-news-minilm")), "warm_start": {"studies": "builtin"}}
    )
    sources = builtin_sources(spec)
    assert [s.name for s in sources] == [f"builtin:{task}" for task in HEAD_TASKS]
    for source in sources:
        values = [t.value for t in source.trials]
        assert values == sorted(values) and len(values) >= 50
        # The tweets and Rotten Tomatoes studies also searched batches of 256, which this space lacks: those
        # configurations drop.
        fitting = [t for t in source.trials[:20] if fit_to_space(spec.space, t.params) is not None]
        assert len(fitting) >= 10
