"""A peer that keeps missing the others' rounds sits rounds out (node/sit_out.py): when it starts, for how long,
and when it comes back."""

from p2pmodel.node.sit_out import LINK, SitOut, misses


def test_a_miss_is_a_round_the_others_agreed_on_without_this_peer():
    assert misses(averaged=False, failed_reducers=0, group_size=1, won=False, winner_votes=2) == 1
    # our all-reduce lost 2 of the 3 other reducers' parts: our link was the slow one
    assert misses(averaged=True, failed_reducers=2, group_size=4, won=False, winner_votes=3) == LINK
    assert misses(averaged=True, failed_reducers=1, group_size=4, won=False, winner_votes=3) == 0  # a partial round
    assert misses(averaged=False, failed_reducers=0, group_size=1, won=True, winner_votes=1) == 0  # we won
    # nobody else agreed either (a 1-1 tie of two lone peers): nothing says our link is the slow one
    assert misses(averaged=False, failed_reducers=0, group_size=1, won=False, winner_votes=1) == 0


def test_three_misses_in_a_row_start_a_sit_out_and_a_failed_first_try_doubles_it():
    s = SitOut()
    assert not s.record(1, missed=1) and not s.record(2, missed=1) and not s.sits_out(3)
    assert s.record(3, missed=1) and (s.sits_out(4), s.sits_out(5), s.sits_out(6)) == (True, True, False)
    assert not s.record(4, missed=1) and not s.record(5, missed=1)  # rounds sat out count for nothing
    assert s.record(6, missed=1) and s.until == 10  # the first try after it missed: 4 rounds out at once
    for r in range(7, 11):
        s.record(r, missed=0)
    assert not s.record(11, missed=0) and s.span == 0  # averaged in: the next sit-out is short again
    assert not s.record(12, missed=1) and not s.record(13, missed=1) and s.record(14, missed=1) and s.until == 16


def test_a_miss_between_rounds_averaged_in_starts_nothing_and_the_span_is_capped():
    s = SitOut(max_span=4)
    for r in range(1, 20):
        assert not s.record(r, missed=int(r % 3 != 0))
    r = 20
    spans = []
    while len(spans) < 4:
        if s.record(r, missed=1):
            spans.append(s.until - r)
        r += 1
    assert spans == [2, 4, 4, 4]


def test_a_round_whose_all_reduce_lost_most_parts_starts_a_sit_out_at_once():
    s = SitOut()
    assert s.record(1, missed=LINK) and s.until == 3


def test_matchmaking_gives_up_on_a_group_s_or_everyone_s_commit_not_on_one_lone_peer_s():
    """SwarmLink._averaged_without_us (the averager's give_up): measured before, a slow peer's lone commit made
    every fast peer give up its matchmaking, and four peers held four digests."""
    from types import SimpleNamespace

    from p2pmodel.node.swarm_link import SwarmLink

    A, B = "a" * 64, "b" * 64
    box: dict[str, str] = {}
    link = SimpleNamespace(identity=SimpleNamespace(peer_id="me"), commit=SimpleNamespace(box=SimpleNamespace()))
    link.commit.box.digests = lambda r: dict(box)
    expected = {"me", "p1", "p2", "slow"}

    def gives_up() -> bool:
        return SwarmLink._averaged_without_us(link, 5, expected)

    assert not gives_up()
    box.update(slow=A, me=B)
    assert not gives_up()  # one lone peer committed (ours does not count)
    box.update(p1=B)
    assert not gives_up()  # two lone peers, two digests
    box.update(p2=B)
    assert gives_up()  # p1 and p2 averaged without us
    box.clear()
    box.update(p1=A, p2=B, slow="c" * 64)
    assert gives_up()  # everyone expected committed already


def test_the_swarm_is_past_a_round_once_another_peer_committed_a_later_one():
    """SwarmLink._swarm_past: a late or far slower peer stops training a round the swarm left behind, and catches
    up instead of committing it alone (measured with --slow 3=10: it trained round 9 for 3 minutes while the others
    reached round 28)."""
    from types import SimpleNamespace

    from p2pmodel.node.swarm_link import SwarmLink

    offers: list[dict] = []
    link = SimpleNamespace(identity=SimpleNamespace(peer_id="me"), commit=SimpleNamespace(box=SimpleNamespace()))
    link.commit.box.latest = lambda: [dict(o) for o in offers]
    assert not SwarmLink._swarm_past(link, 9)
    offers.extend([{"peer_id": "me", "round": 12}, {"peer_id": "p1", "round": 9}])
    assert not SwarmLink._swarm_past(link, 9)  # ours does not count; p1 is at this round, not past it
    offers.append({"peer_id": "p2", "round": 28})
    assert SwarmLink._swarm_past(link, 9) and not SwarmLink._swarm_past(link, 28)
