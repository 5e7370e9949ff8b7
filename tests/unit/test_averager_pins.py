"""Pins of the hivemind matchmaking internals that sync/averager.py sets from the host (through its pipe): the
group's target size and the group key's bucket bits. If a hivemind upgrade renames or stops checking them, this
fails here instead of peers that wait a whole matchmaking window every round or meet peers of another round."""

import inspect

from hivemind.averaging.key_manager import GroupKeyManager
from hivemind.averaging.matchmaking import Matchmaking

from p2pmodel.sync.averager import ROUND_KEY_BITS, DeterministicAverager, round_group_bits


def test_the_group_key_is_built_from_the_bucket_bits_and_checked_on_every_join_request():
    key = inspect.getsource(GroupKeyManager.current_key.fget)
    assert "self.group_bits" in key and ".0b" in key
    reject = inspect.getsource(Matchmaking._check_reasons_to_reject)
    assert "request.group_key != self.group_key_manager.current_key" in reject
    assert "BAD_GROUP_KEY" in reject


def test_the_target_group_size_is_read_while_the_group_assembles():
    assert "self.target_group_size" in inspect.getsource(Matchmaking)
    assert "keys.group_bits = group_bits" in inspect.getsource(DeterministicAverager._expect_group)


def test_round_bits_differ_for_nearby_rounds_and_have_a_fixed_width():
    bits = [round_group_bits(r) for r in range(1, 2000)]
    assert len(set(bits)) == len(bits)
    assert all(len(b) == ROUND_KEY_BITS and set(b) <= {"0", "1"} for b in bits)
    assert round_group_bits(5) == round_group_bits(5 + (1 << ROUND_KEY_BITS))


def test_the_leader_search_reaches_the_dht_only_through_the_group_key_manager():
    """sync/matchmaking.py replaces ``Matchmaking.group_key_manager`` to keep declarations off the DHT: if hivemind
    stored or read them any other way, the DHT traffic would come back unnoticed (and groups might not form)."""
    from hivemind.averaging.matchmaking import PotentialLeaders

    search = inspect.getsource(PotentialLeaders)
    assert "key_manager.declare_averager(" in search and "key_manager.get_averagers(" in search
    assert "dht." not in search
    matchmaking = inspect.getsource(Matchmaking)
    assert "self.group_key_manager" in matchmaking and "dht.store" not in matchmaking and "dht.get" not in matchmaking
    assert "begin_search(step, self.group_key_manager" in matchmaking


def test_an_averager_in_client_mode_serves_no_requests():
    """Why a client-mode averager asks for declarations (sync/matchmaking.py) instead of receiving them."""
    from hivemind.averaging import DecentralizedAverager

    run = inspect.getsource(DecentralizedAverager._run_internal)
    assert "if not self.client_mode:\n                    await self.add_p2p_handlers" in run
