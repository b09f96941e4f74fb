"""A worker's heartbeat schedule: spread over the interval, never longer than it."""

from __future__ import annotations

import itertools
import random

from worker.loop import heartbeat_waits


def test_beats_never_leave_a_gap_longer_than_the_interval() -> None:
    waits = list(itertools.islice(heartbeat_waits(10.0, random.Random(3)), 1000))
    assert 0.0 <= waits[0] <= 10.0
    assert all(7.5 <= w <= 10.0 for w in waits[1:])


def test_workers_started_together_beat_out_of_step() -> None:
    # 256 workers started in the same second: their first beats spread over the whole interval
    # instead of arriving in one burst.
    firsts = sorted(next(heartbeat_waits(10.0, random.Random(seed))) for seed in range(256))
    in_busiest_second = max(sum(1 for f in firsts if s <= f < s + 1.0) for s in range(10))
    assert in_busiest_second < 64
    assert firsts[-1] - firsts[0] > 9.0
