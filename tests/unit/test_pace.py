"""RoundCloses keeps only rounds just ahead of the last commit, so "ready" messages for arbitrary rounds cannot
grow it, and reports how long ago a round closed."""

import time

import pytest

from p2pmodel.node.pace import RoundCloses


@pytest.mark.timeout(10)
def test_keeps_only_rounds_just_ahead_of_the_commit():
    closes = RoundCloses(rounds_ahead=4)
    forwarded = [r for r in range(-3, 10_000) if closes.mark(r, committed=2)]  # a flood of signed "ready"s
    assert sorted(r for r in range(-3, 10_000) if r in closes) == [3, 4, 5, 6]
    assert forwarded == [-1, 0, 1, 2, 3, 4, 5, 6]  # only rounds near the commit travel on
    closes.mark(7, committed=5)  # after a commit, rounds up to it are dropped
    assert len(closes) == 2 and 6 in closes and 7 in closes and 5 not in closes


@pytest.mark.timeout(10)
def test_closed_for_counts_from_the_first_mark():
    closes = RoundCloses()
    assert closes.closed_for(1) is None
    closes.mark(1, committed=0)
    time.sleep(0.05)
    closes.mark(1, committed=0)  # a second "ready" for the same round does not restart the clock
    assert closes.closed_for(1) >= 0.05
    assert closes.closed_for(2) is None


@pytest.mark.timeout(10)
def test_announcers_are_the_peers_of_the_rounds_kept():
    """Who is training now, from gossip alone (SwarmLink.peer_ids adds them to its cached DHT list)."""
    closes = RoundCloses(rounds_ahead=2)
    closes.mark(3, committed=2, peer="a")
    closes.mark_joining(4, committed=2, peer="b")
    closes.mark(9, committed=2, peer="stranger")  # far ahead: not kept, not counted
    assert closes.announcers() == {"a", "b"}
    closes.mark(5, committed=4, peer="c")  # after commits up to 4, rounds 3 and 4 are dropped
    assert closes.announcers() == {"c"}


class RecordingGossip:
    """What Pace needs of Gossip: subscriptions, and a publish that records its calls."""

    def __init__(self):
        self.published: list[tuple[str, dict, float | None]] = []

    def subscribe(self, kind, handler, direct=False):
        pass

    def unsubscribe(self, kind):
        pass

    def publish(self, kind, body, timeout_s=None):
        self.published.append((kind, body, timeout_s))
        return "id"


@pytest.mark.timeout(10)
def test_ready_is_said_once_per_round_with_the_callers_timeout():
    """The overlapped schedule says "ready" at the end of the phase (on the training thread, with a short push
    timeout) and the exchange says it again when it starts: only the first goes out."""
    from types import SimpleNamespace

    from p2pmodel.node.pace import Pace
    from p2pmodel.swarm.keys import READY_KIND

    gossip = RecordingGossip()
    pace = Pace(None, gossip, SimpleNamespace(peer_id="me"), "run", lambda: 2, poll_s=3600, ready_ttl_s=60)
    try:
        pace.announce_ready(3, timeout_s=1.0)
        pace.announce_ready(3)
        pace.announce_ready(4)
        assert gossip.published == [
            (READY_KIND, {"run_id": "run", "round": 3}, 1.0),
            (READY_KIND, {"run_id": "run", "round": 4}, None),
        ]
        assert 3 in pace.closes and pace.ready(3) == {"me"}
    finally:
        pace.close()
