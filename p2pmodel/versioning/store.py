"""Content-addressed checkpoints: ``objects/<digest>.safetensors`` holds a state (parameters, float32);
loading recomputes the digest and refuses a mismatch. ``rounds/<round>.safetensors`` + ``.json`` hold a
peer's private resume state (optimizer moments, counters), and ``HEAD.json`` names the last committed round.
Every file is written atomically, and HEAD last, so a crash at any point leaves the previous commit intact."""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load, save

from p2pmodel.core.errors import IntegrityError
from p2pmodel.core.ids import sha256_hex
from p2pmodel.eval.digest import state_digest
from p2pmodel.versioning.atomic import atomic_write

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.rounds = self.root / "rounds"

    # --- content-addressed states -------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise IntegrityError(f"not a sha256 digest: {digest!r}")
        return self.objects / f"{digest}.safetensors"

    def put_state(self, state: dict[str, torch.Tensor]) -> str:
        """Write a state under its digest (no-op when present) and return the digest."""
        canonical = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
        digest = state_digest(canonical)
        path = self.object_path(digest)
        if not path.exists():
            atomic_write(path, save(canonical, metadata={"digest": digest}))
        return digest

    def has_state(self, digest: str) -> bool:
        return self.object_path(digest).exists()

    def state_bytes(self, digest: str) -> bytes | None:
        path = self.object_path(digest)
        return path.read_bytes() if path.exists() else None

    def get_state(self, digest: str) -> dict[str, torch.Tensor]:
        """Load a state and verify it hashes to its name."""
        path = self.object_path(digest)
        if not path.exists():
            raise IntegrityError(f"state {digest[:12]} is not in {self.objects}")
        return state_from_bytes(path.read_bytes(), digest)

    def import_state_bytes(self, blob: bytes, digest: str) -> dict[str, torch.Tensor]:
        """Verify a downloaded state and store it; raises IntegrityError on any mismatch."""
        state = state_from_bytes(blob, digest)
        if not self.has_state(digest):
            atomic_write(self.object_path(digest), blob)
        return state

    # --- the committed round --------------------------------------------------------------------
    def commit(self, round_: int, digest: str, private: dict[str, torch.Tensor], meta: dict, keep: int) -> None:
        """Record round ``round_`` as committed: private resume tensors, metadata, then HEAD."""
        if not self.has_state(digest):
            raise IntegrityError(f"commit of round {round_}: state {digest[:12]} was not stored first")
        blob = save({k: v.detach().cpu().contiguous() for k, v in private.items()}) if private else b""
        atomic_write(self.rounds / f"{round_}.safetensors", blob)
        record = {"round": round_, "digest": digest, "private_sha256": sha256_hex(blob), "meta": meta}
        atomic_write(self.rounds / f"{round_}.json", json.dumps(record, sort_keys=True).encode())
        atomic_write(self.root / "HEAD.json", json.dumps({"round": round_}).encode())
        self._prune(keep, protect={digest})

    def head(self) -> dict | None:
        """The last committed round as ``{round, digest, meta, state, private}``, verified, or None."""
        head = self.root / "HEAD.json"
        if not head.exists():
            return None
        round_ = int(json.loads(head.read_text())["round"])
        record = json.loads((self.rounds / f"{round_}.json").read_text())
        blob = (self.rounds / f"{round_}.safetensors").read_bytes()
        if sha256_hex(blob) != record["private_sha256"]:
            raise IntegrityError(f"resume state of round {round_} in {self.rounds} is corrupted")
        record["private"] = load(blob) if blob else {}
        record["state"] = self.get_state(record["digest"])
        return record

    def _prune(self, keep: int, protect: set[str]) -> None:
        rounds = sorted(int(p.stem) for p in self.rounds.glob("*.json"))
        for r in rounds[:-keep]:
            record = json.loads((self.rounds / f"{r}.json").read_text())
            (self.rounds / f"{r}.json").unlink(missing_ok=True)
            (self.rounds / f"{r}.safetensors").unlink(missing_ok=True)
            if record["digest"] not in protect | self._referenced() | self.pinned():
                self.object_path(record["digest"]).unlink(missing_ok=True)

    def _referenced(self) -> set[str]:
        return {json.loads(p.read_text())["digest"] for p in self.rounds.glob("*.json")}

    def pinned(self) -> set[str]:
        """Digests that must be kept whatever the retention (tagged versions)."""
        pins = self.root / "pinned.json"
        return set(json.loads(pins.read_text())) if pins.exists() else set()

    def pin(self, digest: str) -> None:
        atomic_write(self.root / "pinned.json", json.dumps(sorted(self.pinned() | {digest})).encode())


def state_from_bytes(blob: bytes, digest: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes (hostile) and check that they hash to ``digest``."""
    try:
        state = load(blob)
    except Exception as e:
        raise IntegrityError(f"state {digest[:12]}: not a valid safetensors file ({type(e).__name__})") from None
    if any(t.dtype != torch.float32 for t in state.values()):
        raise IntegrityError(f"state {digest[:12]}: tensors must be float32")
    actual = state_digest(state)
    if actual != digest:
        raise IntegrityError(f"state digest mismatch: expected {digest[:12]}, got {actual[:12]}")
    return state
