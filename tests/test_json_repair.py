"""Recovering the JSON a model meant from what it wrote: fences, thinking, prose, quotes, commas, cut-offs."""

from __future__ import annotations

import pytest

from memfactory.json_repair import parse_json, repair_json


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[{"op": "ADD", "text": "likes tea"}]', [{"op": "ADD", "text": "likes tea"}]),
        ('<think>let me see</think>```json\n[{"op": "ADD", "text": "x"},]\n```\nDone!', [{"op": "ADD", "text": "x"}]),
        ("Sure: [{'op': 'DELETE', 'id': '1'}] hope that helps [9]", [{"op": "DELETE", "id": "1"}]),
        ('[{"op": "ADD", "text": "a", "tags": ["t",],}', [{"op": "ADD", "text": "a", "tags": ["t"]}]),
        ('[{"op": "UPDATE", "id": "0", "text": "half', [{"op": "UPDATE", "id": "0", "text": "half"}]),
        ("[{'ok': True, 'n': None}]", [{"ok": True, "n": None}]),
        ("```\n[1, 2]", [1, 2]),
    ],
)
def test_parse_json_recovers_damaged_output(text, expected):
    value, report = parse_json(text)
    assert value == expected
    assert report.parsed


def test_parse_json_gives_up_cleanly():
    assert parse_json("no json here")[0] is None
    value, report = parse_json("<think>[1, 2] never closed")
    assert value is None and not report.terminated
    assert parse_json(None)[0] is None
    assert repair_json("plain") is None


def test_the_report_says_whether_the_text_needed_repair():
    value, report = parse_json('```json\n{"a": [1, 2]}\n```')  # fenced but valid: read as is
    assert value == {"a": [1, 2]} and report.parsed and not report.repaired and report.terminated
    value, report = parse_json("{'a': [1, 2,]")  # quotes, trailing comma, unclosed
    assert value == {"a": [1, 2]} and report.parsed and report.repaired
