"""A peer that keeps missing the others' rounds sits rounds out (node/sit_out.py): when it starts, for how long,
and when it comes back."""

from p2pmodel.node.sit_out import SitOut, missed


def test_a_miss_is_a_round_the_others_agreed_on_without_this_peer():
    assert missed(averaged=False, failed_reducers=0, group_size=1, won=False, winner_votes=2)
    assert missed(averaged=True, failed_reducers=2, group_size=4, won=False, winner_votes=3)  # 2 of 3 others lost
    assert not missed(averaged=True, failed_reducers=1, group_size=4, won=False, winner_votes=3)  # a partial round
    assert not missed(averaged=False, failed_reducers=0, group_size=1, won=True, winner_votes=1)  # we won
    # nobody else agreed either (a 1-1 tie of two lone peers): nothing says our link is the slow one
    assert not missed(averaged=False, failed_reducers=0, group_size=1, won=False, winner_votes=1)


def test_two_misses_in_a_row_start_a_sit_out_and_a_failed_first_try_doubles_it():
    s = SitOut()
    assert not s.record(1, miss=True) and not s.sits_out(2)
    assert s.record(2, miss=True) and (s.sits_out(3), s.sits_out(4), s.sits_out(5)) == (True, True, False)
    assert not s.record(3, miss=True) and not s.record(4, miss=True)  # rounds sat out count for nothing
    assert s.record(5, miss=True) and s.until == 9  # the first try after it missed: 4 rounds out at once
    for r in range(6, 10):
        s.record(r, miss=False)
    assert not s.record(10, miss=False) and s.span == 0  # averaged in: the next sit-out is short again
    assert not s.record(11, miss=True) and s.record(12, miss=True) and s.until == 14


def test_a_miss_between_rounds_averaged_in_starts_nothing_and_the_span_is_capped():
    s = SitOut(max_span=4)
    for r in range(1, 20):
        assert not s.record(r, miss=r % 2 == 0)
    r = 20
    spans = []
    while len(spans) < 4:
        if s.record(r, miss=True):
            spans.append(s.until - r)
        r += 1
    assert spans == [2, 4, 4, 4]
