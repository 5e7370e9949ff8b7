"""``--allow`` takes only real PeerIDs: a typo would make every tag look unsigned, so it is a usage error."""

import pytest

from p2pmodel.cli.versions import _allowlist
from p2pmodel.core.errors import UsageError
from p2pmodel.swarm.identity import Identity


@pytest.mark.timeout(30)
def test_allowlist_takes_peer_ids_and_refuses_other_words():
    real = Identity.generate().peer_id
    assert _allowlist([real]) == {real}
    assert _allowlist(None) is None
    for bad in ["nope", "not-a-peer-id", real[:-3], real + "x", ""]:
        with pytest.raises(UsageError, match="not a PeerID"):
            _allowlist([bad])
