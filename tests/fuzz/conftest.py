"""Fixtures of the fuzz tests: one scratch folder and one real SQLite memory bank per module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_harness, shared with bench/fuzz_report.py

from fuzz_harness import UpdateBank


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpdateBank]:
    bank = UpdateBank(tmp_path_factory.mktemp("bank"))
    yield bank
    bank.close()
