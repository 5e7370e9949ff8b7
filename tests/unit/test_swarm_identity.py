"""Identity file format, PeerID derivation and signed envelopes, checked against hivemind's own code."""

import os
import stat

import pytest

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, UsageError, WireError
from p2pmodel.swarm.identity import Identity, peer_id_from_public_key, verify_signature
from p2pmodel.swarm.signed import canonical_pack, open_signed, sign_message


@pytest.fixture(scope="module")
def ident():
    return Identity.generate()


@pytest.fixture(scope="module")
def other():
    return Identity.generate()


@pytest.mark.timeout(30)
def test_load_or_create_persists_and_matches_hivemind(tmp_path):
    from hivemind.p2p import PeerID
    from hivemind.proto import crypto_pb2

    path = tmp_path / "deep" / "dir" / "identity.key"
    first = Identity.load_or_create(path)
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert [p.name for p in path.parent.iterdir()] == ["identity.key"]  # no temp file left behind
    again = Identity.load_or_create(path)
    assert again.peer_id == first.peer_id and again.public_key_bytes == first.public_key_bytes
    data = path.read_bytes()
    assert PeerID.from_identity(data).to_base58() == first.peer_id
    parsed = crypto_pb2.PrivateKey.FromString(data)
    assert parsed.key_type == crypto_pb2.KeyType.RSA
    pub = crypto_pb2.PublicKey.FromString(first.public_key_bytes)
    assert pub.key_type == crypto_pb2.KeyType.RSA and pub.SerializeToString() == first.public_key_bytes


@pytest.mark.timeout(30)
def test_hivemind_generated_identity_loads(tmp_path):
    from hivemind.p2p import P2P, PeerID

    path = tmp_path / "hm.key"
    P2P.generate_identity(str(path))
    assert Identity.load(path).peer_id == PeerID.from_identity(path.read_bytes()).to_base58()


def test_bad_identity_file_is_usage_error(tmp_path):
    path = tmp_path / "junk.key"
    path.write_bytes(b"not a key")
    with pytest.raises(UsageError, match="not a libp2p RSA private key"):
        Identity.load_or_create(path)
    with pytest.raises(UsageError, match="cannot read"):
        Identity.load(tmp_path / "missing.key")


def test_verify_signature(ident, other):
    data = b"hello swarm"
    sig = ident.sign(data)
    assert verify_signature(ident.peer_id, ident.public_key_bytes, data, sig)
    assert not verify_signature(ident.peer_id, ident.public_key_bytes, data + b"!", sig)  # tampered data
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(ident.peer_id, ident.public_key_bytes, data, forged)  # forged signature
    # a valid signature by another key, presented under our PeerID: the key does not hash to the PeerID
    assert not verify_signature(ident.peer_id, other.public_key_bytes, data, other.sign(data))
    assert verify_signature(other.peer_id, other.public_key_bytes, data, other.sign(data))
    # garbage never raises
    assert not verify_signature(ident.peer_id, b"", data, sig)
    assert not verify_signature(123, ident.public_key_bytes, data, sig)
    junk_key = b"\x08\x00\x12\x03abc"
    assert not verify_signature(peer_id_from_public_key(junk_key), junk_key, data, sig)


def test_signed_message_round_trip(ident):
    body = {"b": 1, "a": [1, 2, {"y": 2, "x": b"\x00"}]}
    msg = sign_message(ident, "vote", body)
    got, signer = open_signed(msg, "vote")
    assert got == body and signer == ident.peer_id
    assert canonical_pack(body) == canonical_pack({"a": body["a"], "b": 1})
    with pytest.raises(WireError, match="unexpected message type"):
        open_signed(msg, "tag")
    with pytest.raises(WireError, match="exceeds"):
        open_signed(msg, "vote", max_bytes=100)


def _reenvelope(msg, kind="vote", **changes):
    outer = wire.open_envelope(msg, kind)
    outer.update(changes)
    return wire.envelope(kind, outer)


def test_signed_message_refuses_tampering(ident, other):
    msg = sign_message(ident, "vote", {"verdict": "accept"})
    outer = wire.open_envelope(msg, "vote")
    evil_body = canonical_pack({"verdict": "reject"})
    with pytest.raises(IntegrityError):
        open_signed(_reenvelope(msg, body=evil_body), "vote")  # tampered body
    with pytest.raises(IntegrityError):
        open_signed(_reenvelope(msg, signer=other.peer_id), "vote")  # key does not match the claimed PeerID
    with pytest.raises(IntegrityError):  # other's valid key+PeerID but ident's signature
        open_signed(_reenvelope(msg, signer=other.peer_id, pubkey=other.public_key_bytes), "vote")
    with pytest.raises(IntegrityError):
        forged = outer["sig"][:-1] + bytes([outer["sig"][-1] ^ 0xFF])  # (not "+ 0x00": 1 in 256 already ends so)
        open_signed(_reenvelope(msg, sig=forged), "vote")  # forged signature
    with pytest.raises(WireError):
        open_signed(_reenvelope(msg, sig="text"), "vote")  # wrong type
    with pytest.raises(WireError):
        open_signed(_reenvelope(msg, extra=1), "vote")  # unknown field
    with pytest.raises(WireError):
        open_signed(b"\xc1garbage", "vote")
    # a signature made for another kind cannot be replayed as this kind
    tag = wire.open_envelope(sign_message(ident, "tag", {"verdict": "accept"}), "tag")
    with pytest.raises(IntegrityError):
        open_signed(wire.envelope("vote", tag), "vote")
