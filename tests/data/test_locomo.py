"""LoCoMo loader, the shipped set's observations and the `memfactory data ... locomo` commands."""

from __future__ import annotations

import copy
import json

import pytest

from memfactory.cli import main
from memfactory.data.locomo import (
    UNANSWERABLE,
    download_locomo,
    read_locomo,
)
from memfactory.data.sources import load_locomo
from memfactory.data.synth_locomo import synth_locomo
from memfactory.errors import DataError, MemFactoryError
from memfactory.paths import assets_dir

SHIPPED = assets_dir() / "data" / "locomo_synth.json"


def _real_shaped() -> dict:
    """A record shaped exactly like locomo10.json (extra keys, an image turn, an adversarial item)."""
    return {
        "sample_id": "conv-26",
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Caroline", "dia_id": "D1:1", "text": "Hey Mel!"},
                {
                    "speaker": "Melanie",
                    "dia_id": "D1:2",
                    "text": "Look at this",
                    "img_url": ["x"],
                    "blip_caption": "a dog on a beach",
                },
            ],
            "session_2_date_time": "1:14 pm on 25 May, 2023",
            "session_2": [{"speaker": "Caroline", "dia_id": "D2:1", "text": "I went to a support group yesterday."}],
        },
        "qa": [
            {
                "question": "When did Caroline go to the support group?",
                "answer": "24 May 2023",
                "evidence": ["D2:1"],
                "category": 2,
            },
            {"question": "How many dogs?", "answer": 2, "evidence": ["D1:2"], "category": 1},
            {"question": "What did Caroline paint?", "adversarial_answer": "a sunset", "evidence": [], "category": 5},
        ],
        "observation": {},
        "session_summary": {},
        "event_summary": {},
    }


def test_real_shaped_record_loads(tmp_path):
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps([_real_shaped()]))
    samples = load_locomo(path)
    assert [s.id for s in samples] == ["conv-26/q0", "conv-26/q1"]  # category 5 excluded by default
    first = samples[0]
    assert first.answers == ["24 May 2023"] and samples[1].answers == ["2"]
    assert first.meta["category"] == 2 and first.meta["category_name"] == "temporal" and first.meta["metric"] == "f1"
    assert first.meta["evidence"] == ["D2:1"] and first.meta["conversation_id"] == "conv-26"
    assert [s["session"] for s in first.meta["sessions"]] == [1, 2]
    assert "[shares a photo: a dog on a beach]" in first.meta["sessions"][0]["turns"][1]["text"]
    assert first.context.startswith("[Session 1, 1:56 pm on 8 May, 2023]\nCaroline: Hey Mel!")
    everything = load_locomo(path, exclude_categories=[])
    assert everything[2].answers == [UNANSWERABLE] and everything[2].meta["adversarial_answer"] == "a sunset"


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda r: r["conversation"].pop("speaker_b"), "conversation.speaker_b"),
        (lambda r: r["conversation"].pop("session_2_date_time"), "conversation.session_2_date_time"),
        (lambda r: r["conversation"]["session_1"][0].pop("text"), "conversation.session_1[0].text"),
        (lambda r: r["qa"][1].pop("answer"), "qa[1].answer"),
        (lambda r: r["qa"][0].pop("category"), "qa[0].category"),
        (lambda r: r.pop("qa"), "qa"),
        (lambda r: r.update(observation=[]), "observation"),
        (
            lambda r: r.update(observation={"session_1_observation": {"Caroline": "a fact"}}),
            "observation.session_1_observation.Caroline",
        ),
        (
            lambda r: r.update(observation={"session_2_observation": {"Melanie": [[3, "D2:1"]]}}),
            "observation.session_2_observation.Melanie[0]",
        ),
    ],
)
def test_missing_fields_name_file_conversation_and_field(tmp_path, damage, field):
    good = _real_shaped()
    bad = copy.deepcopy(good)
    damage(bad)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DataError) as info:
        load_locomo(path)
    message = str(info.value)
    assert str(path) in message and "record 1" in message and "'conv-26'" in message and repr(field) in message


def test_observations_become_session_facts(tmp_path):
    record = _real_shaped()
    record["observation"] = {
        "session_1_observation": {"Melanie": [["Melanie shared a photo of a dog.", ["D1:2", "D1:1"]]]},
        "session_2_observation": {"Caroline": [["Caroline went to a support group.", "D2:1"]]},
    }
    path = tmp_path / "locomo10.json"
    path.write_text(json.dumps([record]))
    first, second = load_locomo(path)[0].meta["sessions"]
    assert first["observations"] == [
        {"speaker": "Melanie", "text": "Melanie shared a photo of a dog.", "dia_id": "D1:2,D1:1"}
    ]
    assert second["observations"] == [
        {"speaker": "Caroline", "text": "Caroline went to a support group.", "dia_id": "D2:1"}
    ]
    # The synthetic set carries observations too, and every answerable question's evidence is among them.
    for sample in load_locomo(SHIPPED):
        observed = {o["dia_id"] for session in sample.meta["sessions"] for o in session["observations"]}
        assert set(sample.meta["evidence"]) <= observed


def test_unreadable_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_locomo(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_locomo(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(DataError, match="non-empty"):
        read_locomo(tmp_path / "empty.json")


def test_cli_synth_and_offline_download(tmp_path, capsys, monkeypatch):
    out = tmp_path / "l.json"
    assert main(["data", "synth", "locomo", "--n", "3", "--sessions", "3", "--seed", "1", "--out", str(out)]) == 0
    assert "3 locomo conversations" in capsys.readouterr().out
    assert read_locomo(out) == json.loads(json.dumps(synth_locomo(3, seed=1, sessions=3)))
    assert main(["data", "check", str(out)]) == 0
    assert "27 samples (locomo 27)" in capsys.readouterr().out  # 9 questions each, adversarial included
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["data", "download", "locomo", "--to", str(tmp_path / "dl")]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(MemFactoryError, match="could not download LoCoMo"):
        download_locomo(tmp_path / "dl", url="http://127.0.0.1:9/locomo10.json", timeout=2)
