"""How a run is shown (tracking/view.py): one duration format, step counts, seconds per step, ETA."""

from __future__ import annotations

import pytest

from memfactory.tracking.runs import STATUSES
from memfactory.tracking.view import STATUS_ICONS, eta_seconds, format_duration, seconds_per_step, steps_text


def test_one_duration_format_for_cli_and_ui():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(59.6) == "0:01:00"  # rounded to the second
    assert format_duration(27 * 3600 + 190) == "27:03:10"
    assert format_duration(-3) == "0:00:00"
    assert format_duration(None) == "-"


def test_steps_text():
    assert steps_text(12, 300) == "12/300" and steps_text(12, None) == "12" and steps_text(None, 5) == "0/5"


def test_every_status_word_is_the_databases_and_has_an_icon():
    assert set(STATUS_ICONS) == set(STATUSES)


def test_seconds_per_step_from_recent_step_times_ignores_a_resume_gap():
    records = [{"step": s, "time": 100.0 + 2.0 * s} for s in range(1, 11)]
    records.append({"step": 11, "time": 100.0 + 2.0 * 10 + 3600})  # an hour-long pause (resume), once
    records += [{"step": s, "time": 3720.0 + 2.0 * (s - 11)} for s in range(12, 16)]
    assert seconds_per_step(records) == pytest.approx(2.0)
    # one step so far: the trainer's own step time; nothing usable: unknown
    assert seconds_per_step([{"step": 1, "time": 5.0, "time/step_s": 1.5}]) == pytest.approx(1.5)
    assert seconds_per_step([{"step": 1, "note": "x"}]) is None
    assert seconds_per_step([]) is None
    # only the last window of steps counts: an old slow phase is forgotten
    slow_then_fast = [{"step": s, "time": 10.0 * s} for s in range(1, 30)]
    slow_then_fast += [{"step": s, "time": 290.0 + (s - 29)} for s in range(30, 60)]
    assert seconds_per_step(slow_then_fast, window=20) == pytest.approx(1.0)


def test_eta_is_the_steps_to_go_times_the_seconds_per_step():
    assert eta_seconds(15, 40, 2.0) == pytest.approx(50.0)
    assert eta_seconds(40, 40, 2.0) == 0.0 and eta_seconds(41, 40, None) == 0.0
    assert eta_seconds(3, None, 2.0) is None and eta_seconds(3, 10, None) is None
