"""Fixtures and Hypothesis profiles for the whole suite."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from connecteur import _peerlog
from connecteur._peerlog import LogLimit

# CI machines are small and shared: no per-example deadline there.
settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _fresh_peer_fault_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the whole budget of peer-fault warnings: the level a test sees
    must not depend on how many bad peers the tests before it sent within the minute."""
    monkeypatch.setattr(_peerlog, "PEER_FAULT_LOG", LogLimit())
