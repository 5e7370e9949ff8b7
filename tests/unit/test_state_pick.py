"""Which state a joining peer downloads: the (round, digest) most peers offer, not the highest round anyone
claims, so one hostile key cannot hand every newcomer its own weights."""

import pytest

from p2pmodel.node.state_offers import most_offered, valid_offer

A, B, Z = "a" * 64, "b" * 64, "f" * 64


def _offer(round_, digest, pid="p"):
    return {"peer_id": pid, "round": round_, "digest": digest, "blob": "c" * 64, "size": 1, "time": 0.0}


@pytest.mark.timeout(10)
def test_one_key_at_a_far_round_does_not_outvote_two_that_agree():
    honest = [_offer(7, A, "h1"), _offer(7, A, "h2"), _offer(6, B, "h3")]
    assert most_offered([*honest, _offer(2**62, Z, "x")]) == (7, A)
    assert most_offered([_offer(7, A), _offer(8, B)]) == (8, B)  # equal support: the latest round
    assert most_offered([_offer(8, B), _offer(8, A)]) == (8, A)  # then the smallest digest, the same on every peer
    assert most_offered([]) is None


@pytest.mark.timeout(10)
def test_offer_schema():
    assert valid_offer(_offer(3, A))
    for bad in (
        _offer(True, A),
        _offer(0, A),
        _offer(2**63, A),
        _offer(3, ""),
        _offer(3, A.upper()),
        {**_offer(3, A), "blob": "x" * 64},
        [],
    ):
        assert not valid_offer(bad), bad


@pytest.mark.timeout(10)
def test_package_limit_fits_a_full_package_and_little_more():
    import torch

    from p2pmodel.node.state_package import pack_state, package_limit

    names = ["tok.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "ln_f.weight" + "x" * 300]
    params = [torch.randn(256, 64), torch.randn(192, 64), torch.randn(192), torch.randn(64)]
    shapes = {n: tuple(p.shape) for n, p in zip(names, params, strict=True)}
    full = pack_state(names, params, [torch.randn_like(p) for p in params], round_=2**40)
    assert len(full) <= package_limit(shapes) < len(full) + 8192
