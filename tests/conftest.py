"""Test tiers. ``swarm`` marks every test that starts a process (a hivemind DHT, p2pd, ``peer run``, git, a
linter): all of tests/integration and tests/e2e, and the marked tests of tests/unit. ``make test`` runs every
tier; ``make test-fast`` runs the rest (``-m "not swarm"``) with P2PMODEL_FAST_TIER=1, where starting a process
fails the test that tried, so the fast tier stays process-free as it grows."""

import os
import subprocess

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent.name in ("integration", "e2e"):
            item.add_marker(pytest.mark.swarm)


@pytest.fixture(autouse=True)
def _no_processes_in_the_fast_tier(request, monkeypatch):
    if not os.environ.get("P2PMODEL_FAST_TIER") or request.node.get_closest_marker("swarm") is not None:
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it @pytest.mark.swarm")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)
