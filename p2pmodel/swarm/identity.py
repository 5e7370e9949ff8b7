"""A peer's persistent libp2p RSA identity: the file p2pd reads, its PeerID, and signatures anyone can verify.

The file format is exactly what hivemind's ``P2P(identity_path=...)`` writes and the p2pd daemon reads: a
libp2p ``crypto.pb.PrivateKey`` protobuf holding an RSA key in PKCS#1 DER. The PeerID is the sha2-256
multihash of the protobuf-encoded public key (libp2p peer-ids spec), so it equals what the daemon reports.
Signatures are RSA PKCS#1 v1.5 over SHA-256, the scheme libp2p uses for RSA keys.

The two protobuf messages have two fields each; they are encoded and parsed here by hand (strictly: the
only accepted encoding is the canonical one) so that verifying a signature needs neither hivemind nor torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from p2pmodel.core.errors import UsageError

RSA_KEY_BITS = 2048
_KEY_TYPE_RSA = 0
_MULTIHASH_SHA256 = b"\x12\x20"  # multihash code sha2-256, digest length 32
_MAX_PUBLIC_KEY_BYTES = 2048  # an RSA-4096 public key protobuf is ~550 bytes
_MAX_SIGNATURE_BYTES = 1024
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class Identity:
    """An RSA private key with its libp2p PeerID. Build with ``load_or_create`` or ``generate``."""

    def __init__(self, private_key: rsa.RSAPrivateKey, path: Path | None = None):
        self._key = private_key
        self.path = path
        der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_bytes: bytes = _encode_key_protobuf(der)
        """libp2p ``crypto.pb.PublicKey`` protobuf bytes; what a PeerID is the hash of."""
        self.peer_id: str = peer_id_from_public_key(self.public_key_bytes)
        """base58 libp2p PeerID string (``Qm...``), the same the p2pd daemon reports."""

    @classmethod
    def generate(cls) -> Identity:
        """A fresh in-memory identity (tests, ephemeral peers)."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Identity:
        """Read an identity file; UsageError if it is missing or not a libp2p RSA private key."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read identity file {path}: {e.strerror or e}") from None
        try:
            der = _decode_key_protobuf(data)
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise UsageError(f"identity file {path} is not a libp2p RSA private key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UsageError(f"identity file {path} does not hold an RSA key")
        return cls(key, path)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> Identity:
        """Reuse the identity at ``path``; on first run create it (parent dirs, mode 0400, atomic write)."""
        path = Path(path).expanduser()
        if path.exists():
            return cls.load(path)
        identity = cls.generate()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_new_file_atomically(path, identity.private_key_file_bytes())
        except FileExistsError:  # another process created it first: use theirs
            return cls.load(path)
        except OSError as e:
            raise UsageError(f"cannot create identity file {path}: {e.strerror or e}") from None
        identity.path = path
        return identity

    def private_key_file_bytes(self) -> bytes:
        """The identity file content (hivemind / p2pd format)."""
        der = self._key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return _encode_key_protobuf(der)

    def sign(self, data: bytes) -> bytes:
        """RSA PKCS#1 v1.5 / SHA-256 signature of ``data`` (libp2p's RSA scheme)."""
        return self._key.sign(bytes(data), padding.PKCS1v15(), hashes.SHA256())

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"


def peer_id_from_public_key(public_key: bytes) -> str:
    """libp2p PeerID (base58 sha2-256 multihash) of a protobuf-encoded public key."""
    return _b58encode(_MULTIHASH_SHA256 + hashlib.sha256(public_key).digest())


def verify_signature(peer_id: str, public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True iff ``public_key`` hashes to ``peer_id`` and ``signature`` is its valid signature of ``data``.

    Never raises on hostile input: anything malformed is simply not a valid signature.
    """
    if not all(isinstance(x, (bytes, bytearray)) for x in (public_key, data, signature)):
        return False
    if not isinstance(peer_id, str) or len(public_key) > _MAX_PUBLIC_KEY_BYTES:
        return False
    if len(signature) > _MAX_SIGNATURE_BYTES or peer_id_from_public_key(bytes(public_key)) != peer_id:
        return False
    try:
        key = serialization.load_der_public_key(_decode_key_protobuf(bytes(public_key)))
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(bytes(signature), bytes(data), padding.PKCS1v15(), hashes.SHA256())
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _encode_key_protobuf(der: bytes) -> bytes:
    """crypto.pb.{Public,Private}Key{key_type=RSA, data=der}: field 1 varint, field 2 length-delimited."""
    return b"\x08" + _varint(_KEY_TYPE_RSA) + b"\x12" + _varint(len(der)) + der


def _decode_key_protobuf(data: bytes) -> bytes:
    """The DER payload of a canonically encoded RSA key protobuf, else ValueError."""
    if data[:3] != b"\x08\x00\x12":
        raise ValueError("not an RSA key protobuf")
    length, pos = 0, 3
    for shift in range(0, 35, 7):
        if pos >= len(data):
            raise ValueError("truncated key protobuf")
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
    else:
        raise ValueError("bad varint in key protobuf")
    der = data[pos:]
    if len(der) != length or _encode_key_protobuf(der) != data:
        raise ValueError("key protobuf is not canonical")
    return der


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58_ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def _write_new_file_atomically(path: Path, content: bytes) -> None:
    """Write ``content`` to a temp file (0600, fsync), make it 0400, then link it in; never overwrites."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o400)
        try:
            os.link(tmp, path)  # atomic, and raises FileExistsError instead of clobbering a concurrent writer
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: plain atomic rename
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
