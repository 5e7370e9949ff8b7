"""A peer's patch material on disk, served by sha256 like any blob: the round objects it committed itself
(versioning/round_object.py) and the outer momentum of its release candidates (what a pulled version needs to
replay later rounds). ``patches/index.json`` maps each round to its object (id, bytes, parent, child digests) and
each candidate round to its momentum blob; files are written atomically, the index last.

Retention: the objects and momentum of the newest ``keep_rounds`` rounds; an older version is then pulled whole.
The round thread is the one writer; the blob server reads (a file it finds gone is simply not served)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

from p2pmodel.core.ids import is_hex64, sha256_hex
from p2pmodel.versioning.atomic import atomic_write

_FILE = re.compile(r"^[0-9a-f]{64}\.(round|momentum)$")


class PatchStore:
    def __init__(self, root: str | Path, keep_rounds: int = 32):
        self.dir = Path(root) / "patches"
        self.keep_rounds = keep_rounds
        self._lock = threading.Lock()
        path = self.dir / "index.json"
        index = json.loads(path.read_text()) if path.exists() else {}
        self._rounds: dict[int, dict] = {int(r): e for r, e in index.get("rounds", {}).items()}
        self._momentum: dict[int, dict] = {int(r): e for r, e in index.get("momentum", {}).items()}

    def put_round(self, round_: int, blob: bytes, parent: str, child: str) -> str:
        """Store round ``round_``'s object (replacing one of an earlier incarnation of that round) → its id."""
        blob_id = sha256_hex(blob)
        atomic_write(self.dir / f"{blob_id}.round", blob)
        with self._lock:
            self._rounds[round_] = {"id": blob_id, "bytes": len(blob), "parent": parent, "child": child}
            self._save(newest=round_)
        return blob_id

    def put_momentum(self, round_: int, blob: bytes) -> str:
        """Store the outer momentum a release candidate of ``round_`` holds (canonical bytes) → its id."""
        blob_id = sha256_hex(blob)
        atomic_write(self.dir / f"{blob_id}.momentum", blob)
        with self._lock:
            self._momentum[round_] = {"id": blob_id, "bytes": len(blob)}
            self._save(newest=round_)
        return blob_id

    def chain(self, parent: str, child: str, first: int, last: int) -> list[list] | None:
        """The objects of rounds ``first``..``last`` as [[id, bytes], ...] if this peer holds them all and they lead
        from state ``parent`` to state ``child``, one round into the next; None otherwise (it re-synced or joined in
        between)."""
        with self._lock:
            entries = [self._rounds.get(r) for r in range(first, last + 1)]
        refs, digest = [], parent
        for e in entries:
            if e is None or e["parent"] != digest:
                return None
            refs.append([e["id"], e["bytes"]])
            digest = e["child"]
        return refs if digest == child else None

    def get(self, blob_id: str) -> bytes | None:
        """Blob provider: a round object or momentum blob this peer holds, by id."""
        if not is_hex64(blob_id):
            return None
        for suffix in ("round", "momentum"):
            try:
                return (self.dir / f"{blob_id}.{suffix}").read_bytes()
            except OSError:
                continue
        return None

    def _save(self, newest: int) -> None:
        horizon = newest - self.keep_rounds
        for table in (self._rounds, self._momentum):
            for r in [r for r in table if r <= horizon]:
                del table[r]
        index = {"rounds": self._rounds, "momentum": self._momentum}
        atomic_write(self.dir / "index.json", json.dumps(index, sort_keys=True).encode())
        live = {e["id"] for e in self._rounds.values()} | {e["id"] for e in self._momentum.values()}
        for path in self.dir.iterdir():
            if _FILE.match(path.name) and path.name.split(".")[0] not in live:
                path.unlink(missing_ok=True)
