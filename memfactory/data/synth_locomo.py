"""Seeded synthetic LoCoMo conversations, written in LoCoMo's own shape (see :mod:`memfactory.data.locomo`).

Two invented people chat over several sessions and their facts change (one moves city, changes a
favourite food, loses a pet), so a memory manager needs UPDATE and DELETE, not just ADD. Its
categories: 4 = a current fact (single-hop), 2 = when something changed (temporal), 3 = what a
fact was before it changed, 1 = a fact reached through another (multi-hop), 5 = never mentioned
(adversarial). Each session carries LoCoMo-style annotated observations of its facts.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from memfactory.data.synth_words import (
    FOODS,
    HOBBIES,
    LOCOMO_CITIES,
    LOCOMO_FIRST_NAMES,
    LOCOMO_JOBS,
    LOCOMO_PETS,
    MONTHS,
    PET_NAMES,
)

_FILLER = [  # (question, reply, LoCoMo-style observation of the reply with {a} asking and {b} replying)
    ("How has your week been?", "Busy but good, thanks for asking.", "{b} had a busy but good week."),
    (
        "Did you do anything fun at the weekend?",
        "Mostly relaxed at home, it was nice.",
        "{b} relaxed at home at the weekend.",
    ),
    (
        "The weather has been strange lately.",
        "Yes, sunny one day and rainy the next.",
        "{b} noticed the weather changing from sunny to rainy.",
    ),
    (
        "Have you read anything good recently?",
        "A short mystery novel, quite gripping.",
        "{b} read a gripping short mystery novel.",
    ),
    (
        "I finally cleaned out my garage.",
        "That always feels great once it is done.",
        "{b} thinks a cleaned-out garage feels great.",
    ),
    ("Work has been hectic this month.", "I hope it calms down for you soon.", "{b} hopes work calms down for {a}."),
]


def _when(day: date, rng: random.Random) -> tuple[str, str]:
    """LoCoMo's session time format and the short date used in answers."""
    hour, minute = rng.randrange(1, 12), rng.randrange(0, 60)
    half = rng.choice(["am", "pm"])
    long = f"{hour}:{minute:02d} {half} on {day.day} {MONTHS[day.month - 1]}, {day.year}"
    return long, f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def _conversation(rng: random.Random, index: int, sessions: int) -> dict[str, Any]:
    a, b = rng.sample(LOCOMO_FIRST_NAMES, 2)
    cities = rng.sample(LOCOMO_CITIES, 3)
    foods = rng.sample(FOODS, 2)
    pet_kind, pet_name = rng.choice(LOCOMO_PETS), rng.choice(PET_NAMES)
    hobby_b, job_a, job_b = rng.choice(HOBBIES), *rng.sample(LOCOMO_JOBS, 2)
    sessions = max(3, sessions)
    day = date(2023, rng.randrange(1, 10), rng.randrange(1, 28))
    plan: list[list[tuple[str, str, str | None]]] = [[] for _ in range(sessions)]  # (speaker, text, fact tag)
    # Session 1: the starting facts.
    plan[0] += [
        (a, f"I live in {cities[0]} now, close to the old harbour.", "city0"),
        (b, f"Nice! My {pet_kind} {pet_name} would love the harbour walks.", "pet"),
        (a, f"My favourite food has always been {foods[0]}.", "food0"),
        (b, f"I spend most Sundays on {hobby_b}, it keeps me calm.", "hobby"),
    ]
    plan[1] += [
        (a, f"I started a new job as a {job_a} this week.", "job_a"),
        (b, f"Congratulations! I have been working as a {job_b} for years.", "job_b"),
    ]
    move = rng.randrange(1, sessions)
    plan[move].append((a, f"Big news: I moved from {cities[0]} to {cities[1]} last weekend.", "city1"))
    change = rng.randrange(1, sessions)
    plan[change].append((a, f"These days I prefer {foods[1]} over {foods[0]}, funny how tastes change.", "food1"))
    loss = sessions - 1
    plan[loss].append((b, f"Sadly I had to give {pet_name} away, so I do not have a {pet_kind} anymore.", "pet_gone"))

    # LoCoMo's annotated observations: each fact in the third person, with the turn it comes from.
    facts = {
        "city0": f"{a} lives in {cities[0]}.",
        "pet": f"{b} has a {pet_kind} named {pet_name}.",
        "food0": f"{a}'s favourite food is {foods[0]}.",
        "hobby": f"{b} spends most Sundays on {hobby_b}.",
        "job_a": f"{a} started a new job as a {job_a}.",
        "job_b": f"{b} works as a {job_b}.",
        "city1": f"{a} moved from {cities[0]} to {cities[1]}.",
        "food1": f"{a} now prefers {foods[1]} over {foods[0]}.",
        "pet_gone": f"{b} gave {pet_name} away and no longer has a {pet_kind}.",
    }
    observation: dict[str, dict[str, list[list[str]]]] = {}
    conversation: dict[str, Any] = {"speaker_a": a, "speaker_b": b}
    evidence: dict[str, str] = {}
    dates: dict[str, str] = {}
    for s in range(sessions):
        long, short = _when(day, rng)
        day += timedelta(days=rng.randrange(5, 20))
        conversation[f"session_{s + 1}_date_time"] = long
        ask, reply, chat = rng.choice(_FILLER)
        facts["chat"] = chat.format(a=a, b=b)
        turns_spec = [(a, ask, None), (b, reply, "chat"), *plan[s]]
        turns = []
        observed: dict[str, list[list[str]]] = {}
        for t, (speaker, text, tag) in enumerate(turns_spec):
            dia = f"D{s + 1}:{t + 1}"
            turns.append({"speaker": speaker, "dia_id": dia, "text": text})
            if tag:
                if tag != "chat":
                    evidence[tag], dates[tag] = dia, short
                observed.setdefault(speaker, []).append([facts[tag], dia])
        conversation[f"session_{s + 1}"] = turns
        observation[f"session_{s + 1}_observation"] = observed

    qa = [
        {
            "question": f"Which city does {a} live in now?",
            "answer": cities[1],
            "evidence": [evidence["city1"]],
            "category": 4,
        },
        {
            "question": f"What is {a}'s favourite food now?",
            "answer": foods[1],
            "evidence": [evidence["food1"]],
            "category": 4,
        },
        {"question": f"What does {a} work as?", "answer": job_a, "evidence": [evidence["job_a"]], "category": 4},
        {
            "question": f"What hobby does {b} do on Sundays?",
            "answer": hobby_b,
            "evidence": [evidence["hobby"]],
            "category": 4,
        },
        {
            "question": f"Does {b} still have a {pet_kind}?",
            "answer": "No",
            "evidence": [evidence["pet_gone"]],
            "category": 4,
        },
        {
            "question": f"When did {a} move to {cities[1]}?",
            "answer": dates["city1"],
            "evidence": [evidence["city1"]],
            "category": 2,
        },
        {
            "question": f"Which city did {a} live in before moving?",
            "answer": cities[0],
            "evidence": [evidence["city0"], evidence["city1"]],
            "category": 3,
        },
        {
            "question": f"What was the name of {b}'s {pet_kind}?",
            "answer": pet_name,
            "evidence": [evidence["pet"]],
            "category": 1,
        },
        {"question": f"What is {b}'s favourite food?", "adversarial_answer": foods[0], "evidence": [], "category": 5},
    ]
    return {"sample_id": f"synth-{index}", "conversation": conversation, "observation": observation, "qa": qa}


def synth_locomo(n: int = 4, seed: int = 0, sessions: int = 4) -> list[dict[str, Any]]:
    """``n`` seeded LoCoMo-shaped conversations (``sessions`` sessions each, at least 3)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(f"locomo/{seed}")
    return [_conversation(rng, i, sessions) for i in range(n)]


def write_locomo(records: list[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path
