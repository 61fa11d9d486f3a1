"""webui.state.refreshed_choices: a refreshed dropdown never sends back a value the user may have changed meanwhile."""

from __future__ import annotations

from webui.state import refreshed_choices


def test_a_value_still_offered_is_not_sent_back():
    update = refreshed_choices(["a", "b"], "b")
    assert update["choices"] == ["a", "b"] and "value" not in update


def test_a_value_gone_falls_back_or_clears():
    assert refreshed_choices(["a", "b"], "gone", "a")["value"] == "a"
    assert refreshed_choices(["a", "b"], "gone")["value"] is None
    assert refreshed_choices(["a", "b"], "gone", "not offered")["value"] is None
    assert refreshed_choices(["a"], None, "a")["value"] == "a"  # nothing picked: the fallback
    assert "value" not in refreshed_choices(["a"], None)


def test_a_multiselect_keeps_what_is_still_offered():
    assert "value" not in refreshed_choices(["a", "b", "c"], ["a", "c"])
    assert refreshed_choices(["a", "b"], ["a", "gone"])["value"] == ["a"]
    assert "value" not in refreshed_choices(["a"], [])
