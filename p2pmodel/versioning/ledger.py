"""The append-only, crash-safe ledger of verified tags each peer keeps on disk.

File format: a sequence of records ``[u32 big-endian length][sha256 of payload (32 bytes)][payload]`` where
the payload is the canonical msgpack of one certificate (raw signed vote bytes included, so anyone can
re-verify it). Appends are one write + fsync under an exclusive ``flock``; a crash mid-append leaves at most
a torn tail, which the next locked open/append truncates, so earlier tags are never lost. Readers take no
lock: they read complete, checksummed records and stop at anything else, so another process sees every tag
appended before it looked. Every record is verified again on load (signatures, quorum, parent), and a
certificate is appended only after ``verify_tag`` against its parent already in the ledger. One version has
at most one certificate: a different one (another ``tag_id``) is refused as a conflict and never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
from pathlib import Path

from p2pmodel.core import wire
from p2pmodel.core.errors import IntegrityError, WireError
from p2pmodel.swarm.signed import canonical_pack
from p2pmodel.versioning.semver import Version
from p2pmodel.versioning.tag import (
    DEFAULT_MAJOR_FRACTION,
    MAX_TAG_BYTES,
    check_tag_schema,
    tag_id,
    verify_tag,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: single-process use only
    fcntl = None

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">I32s")


class MissingParentError(IntegrityError):
    """A certificate whose parent version is not in the ledger yet (fetch and append the parent first)."""


class Ledger:
    """Append-only, crash-safe ledger of verified tags on disk (one per peer)."""

    def __init__(
        self,
        path: str | Path,
        allowlist: set[str] | None = None,
        major_fraction: float = DEFAULT_MAJOR_FRACTION,
    ):
        self.path = Path(path)
        self.allowlist = set(allowlist) if allowlist is not None else None
        self.major_fraction = major_fraction
        self._lock = threading.Lock()
        self._certs: dict[Version, dict] = {}
        self._ids: dict[Version, str] = {}
        self._offset = 0  # bytes of the file already read
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        try:
            with self._lock, self._locked_file() as fd:
                self._read(fd, truncate=True)
        except PermissionError:  # a read-only ledger (another user's): read what is complete, append fails
            if created:
                raise
            self._refresh()
        if created:
            _fsync_dir(self.path.parent)

    # --- reading ----------------------------------------------------------------------------------
    def get(self, version: str | Version) -> dict | None:
        """The certificate of ``version`` (str or Version), or None (also for a string that is no version)."""
        try:
            v = Version.parse(version)
        except ValueError:
            return None
        self._refresh()
        with self._lock:
            cert = self._certs.get(v)
            return _copy(cert) if cert is not None else None

    def latest(self) -> dict | None:
        """The certificate of the highest version, or None when the ledger is empty."""
        self._refresh()
        with self._lock:
            return _copy(self._certs[max(self._certs)]) if self._certs else None

    def all(self) -> list[dict]:
        """Every certificate, sorted by version."""
        self._refresh()
        with self._lock:
            return [_copy(self._certs[v]) for v in sorted(self._certs)]

    def versions(self) -> list[Version]:
        self._refresh()
        with self._lock:
            return sorted(self._certs)

    def tag_id(self, version: str | Version) -> str | None:
        self._refresh()
        with self._lock:
            return self._ids.get(Version.parse(version))

    def __len__(self) -> int:
        self._refresh()
        with self._lock:
            return len(self._certs)

    def __contains__(self, version: object) -> bool:
        return isinstance(version, (str, Version)) and self.get(version) is not None

    # --- appending --------------------------------------------------------------------------------
    def append(self, cert: dict) -> bool:
        """Verify ``cert`` against its parent in the ledger and store it durably.

        True if newly stored; False if this exact tag (same ``tag_id``) is already there. Raises
        MissingParentError (an IntegrityError) if the parent is not here yet, IntegrityError for an invalid
        certificate, and IntegrityError("conflict ...") for a different certificate of a stored version.
        """
        version = check_tag_schema(cert)
        tid = tag_id(cert)
        payload = canonical_pack(cert)
        if len(payload) > MAX_TAG_BYTES:
            raise IntegrityError(f"invalid tag: {len(payload)} bytes exceeds {MAX_TAG_BYTES}")
        with self._lock, self._locked_file() as fd:
            self._read(fd, truncate=True)  # records other processes appended meanwhile
            if not self._admissible(cert, version, tid):
                return False
            record = _HEADER.pack(len(payload), hashlib.sha256(payload).digest()) + payload
            os.lseek(fd, self._offset, os.SEEK_SET)
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            self._offset += len(record)
            self._certs[version] = wire.unpack(payload, MAX_TAG_BYTES)
            self._ids[version] = tid
        return True

    def check(self, cert: dict) -> bool:
        """What ``append`` would decide, storing nothing: True if it would store ``cert``, False if it is here
        already; raises as ``append`` does."""
        version = check_tag_schema(cert)
        with self._lock, self._locked_file() as fd:
            self._read(fd, truncate=True)
            return self._admissible(cert, version, tag_id(cert))

    def _admissible(self, cert: dict, version, tid: str) -> bool:
        if self._ids.get(version) == tid:
            return False
        self._verify(cert)
        if version in self._certs:
            held = self._certs[version]
            raise IntegrityError(
                f"conflict: {version} is already tagged (digest {held['digest'][:12]}, round {held['round']}, "
                f"tag {self._ids[version][:12]}); refusing digest {cert['digest'][:12]}, round {cert['round']}, "
                f"tag {tid[:12]}"
            )
        return True

    def extend(self, certs: list[dict]) -> int:
        """Append certificates in version order (parents first); returns how many were new."""
        ordered = sorted(certs, key=lambda c: check_tag_schema(c))
        return sum(self.append(c) for c in ordered)

    # --- internals --------------------------------------------------------------------------------
    def _verify(self, cert: dict) -> None:
        parent = None
        if cert["parent"]:
            parent = self._certs.get(Version.parse(cert["parent"]))
            if parent is None:
                raise MissingParentError(f"parent {cert['parent']} of {cert['version']} is not in the ledger")
        verify_tag(cert, parent, allowlist=self.allowlist, major_fraction=self.major_fraction)

    @contextlib.contextmanager
    def _locked_file(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def _refresh(self) -> None:
        """Pick up records appended by other processes (no lock; stops at an incomplete tail)."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return
        with self._lock:
            if size == self._offset:
                return
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return
            try:
                self._read(fd, truncate=False)
            finally:
                os.close(fd)

    def _read(self, fd: int, truncate: bool) -> None:
        """Read records from ``self._offset``; with ``truncate`` (exclusive lock held) cut a torn/corrupt tail."""
        size = os.fstat(fd).st_size
        if size < self._offset:  # the file was replaced or cut behind our back: start over
            logger.warning("ledger %s shrank; reloading it", self.path)
            self._certs.clear()
            self._ids.clear()
            self._offset = 0
        os.lseek(fd, self._offset, os.SEEK_SET)
        data = _read_all(fd, size - self._offset)
        pos = 0
        while pos < len(data):
            if len(data) - pos < _HEADER.size:
                break
            length, digest = _HEADER.unpack_from(data, pos)
            start, end = pos + _HEADER.size, pos + _HEADER.size + length
            if length > MAX_TAG_BYTES or end > len(data):
                break
            payload = data[start:end]
            if hashlib.sha256(payload).digest() != digest:
                break
            pos = end
            self._load(payload)
        self._offset += pos
        if pos < len(data) and truncate:
            logger.warning(
                "ledger %s: dropping a torn or corrupt tail of %d bytes at offset %d",
                self.path,
                len(data) - pos,
                self._offset,
            )
            os.ftruncate(fd, self._offset)
            os.fsync(fd)

    def _load(self, payload: bytes) -> None:
        """Index one checksummed record; a record that does not verify here is skipped, not deleted."""
        try:
            cert = wire.unpack(payload, MAX_TAG_BYTES)
            version = check_tag_schema(cert)
            tid = tag_id(cert)
            if self._ids.get(version) == tid:
                return
            if version in self._certs:
                raise IntegrityError(f"conflict with the stored {version}")
            self._verify(cert)
        except (WireError, IntegrityError) as e:
            logger.warning("ledger %s: skipping a stored tag: %s", self.path, e)
            return
        self._certs[version] = cert
        self._ids[version] = tid


def _copy(cert: dict) -> dict:
    out = dict(cert)
    out["electorate"] = list(cert["electorate"])
    out["votes"] = list(cert["votes"])
    out["metrics"] = dict(cert["metrics"])
    return out


def _read_all(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
