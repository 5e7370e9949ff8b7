"""A Peer holds what survives a round: θ_global (CPU fp32), the local model and its inner optimizer, the
outer optimizer, the data stream and the checkpoint store. commit() and restore() make rounds durable."""

import logging
import time
from pathlib import Path

import torch

from p2pmodel.core.ids import stable_hash
from p2pmodel.data import TrainStream
from p2pmodel.data.corpus import load_data
from p2pmodel.eval import EvalReport, evaluate
from p2pmodel.eval.sets import load_eval_sets, set_fingerprints
from p2pmodel.models import build_model
from p2pmodel.sync.outer import OuterOptimizer
from p2pmodel.train import InnerTrainer, pick_device
from p2pmodel.versioning.patch_store import PatchStore
from p2pmodel.versioning.store import Store

log = logging.getLogger(__name__)


def compute_run_id(cfg, corpus_fingerprint: str, eval_set_fingerprints: dict[str, str] | None = None) -> str:
    """A run is one lineage: everything peers must share to average and commit the same bits (model, data, eval,
    seed, H, codec, outer optimizer, the validation sets and the protocol: ``Config.shared_spec``)."""
    return stable_hash(cfg.shared_spec(corpus_fingerprint, eval_set_fingerprints))[:16]


class Peer:
    def __init__(self, cfg, data_dir: str | Path, peer_id: str):
        self.cfg, self.peer_id = cfg, peer_id
        if cfg.train.torch_threads:
            torch.set_num_threads(cfg.train.torch_threads)
        self.device = pick_device(cfg.train.device)
        self.corpus = load_data(cfg.data, cfg.model.seq_len + 2, cfg.model.vocab_size)
        if self.corpus.max_token >= cfg.model.vocab_size:
            from p2pmodel.core.errors import DataError

            raise DataError(f"data has token id {self.corpus.max_token} but model.vocab_size is {cfg.model.vocab_size}")
        self.eval_sets = load_eval_sets(cfg, self.corpus)  # once: judged on every release candidate
        self.set_fingerprints = set_fingerprints(self.eval_sets)
        self.run_id = compute_run_id(cfg, self.corpus.fingerprint, self.set_fingerprints)
        self.store = Store(Path(data_dir))
        self.patches = PatchStore(data_dir, cfg.versioning.keep_rounds)
        self.model = build_model(cfg.model, cfg.train.seed)
        if cfg.model.init_from:  # a fork: the lineage starts from a pulled (or merged) state
            _load_fork(self.model, cfg.model.init_from)
        self.model = self.model.to(self.device)
        self.names = [n for n, _ in self.model.named_parameters()]
        self.global_params = [p.detach().to("cpu", torch.float32).clone() for p in self.model.parameters()]
        self.trainer = InnerTrainer(self.model, cfg.train, self.device)
        self.outer = OuterOptimizer(
            self.global_params, lr=cfg.sync.outer_lr, momentum=cfg.sync.outer_momentum, nesterov=cfg.sync.nesterov
        )
        self.stream = TrainStream(self.corpus.train, cfg.model.seq_len, cfg.train.seed, peer_id)
        self.round = 0
        self.digest = self.global_digest()
        self.samples_total = 0
        self.last_report: EvalReport | None = None
        self.counters = {"bytes_sent": 0, "bytes_received": 0}
        self.history: list[list] = []  # [round, val_loss] of recent commits (for plots and light clients)
        # overlap (sync.overlap): the delta trained but not averaged yet; not checkpointed (after a restart the
        # peer trains its round first)
        self.in_flight = None
        self.adoption: tuple[int, str, str] | None = None  # (round, digest, version): a reviewed state to adopt

    # --- state views -----------------------------------------------------------------------------
    def global_state(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.global_params, strict=True))

    def global_digest(self) -> str:
        from p2pmodel.eval import state_digest

        return state_digest(self.global_state())

    def pseudo_gradient(self, base: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Δ = base − θ_local, on the CPU in fp32; ``base`` is where the inner phase started (θ_global unless the
        round overlapped its exchange: node/round.py)."""
        return [
            g - p.detach().to("cpu", torch.float32)
            for g, p in zip(self.global_params if base is None else base, self.model.parameters(), strict=True)
        ]

    def load_global_into_local(self) -> None:
        self.set_local(self.global_params)

    def set_local(self, params: list[torch.Tensor]) -> None:
        """Make ``params`` (CPU fp32, the parameters' order) the local weights the next inner phase starts from."""
        with torch.no_grad():
            for g, p in zip(params, self.model.parameters(), strict=True):
                p.copy_(g.to(p.device, p.dtype))

    def shift_local(self, by: list[torch.Tensor]) -> None:
        """Add ``by`` (CPU fp32, the parameters' order) to the local weights: an overlapped round moves its inner
        trajectory onto the real θ_global once that is known (node/round.py)."""
        with torch.no_grad():
            for d, p in zip(by, self.model.parameters(), strict=True):
                p.add_(d.to(p.device, p.dtype))

    def set_global(self, state: dict[str, torch.Tensor], local: bool = True) -> None:
        """Adopt a verified state (downloaded or restored) as θ_global and, with ``local``, as the local weights."""
        missing = set(self.names) ^ set(state)
        if missing:
            from p2pmodel.core.errors import IntegrityError

            raise IntegrityError(f"state does not match the model's parameters: {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, g in zip(self.names, self.global_params, strict=True):
                g.copy_(state[name])
        if local:
            self.load_global_into_local()
        self.digest = self.global_digest()

    def adopt(self, params: dict[str, torch.Tensor], momentum: list[torch.Tensor | None], local: bool = True) -> None:
        """Take a verified downloaded state: θ_global, the outer momentum and, with ``local``, the local weights."""
        self.set_global(params, local)
        outer = self.outer.state_dict()
        outer["momentum_buffers"] = momentum
        self.outer.load_state_dict(outer)

    def is_release_round(self, round_: int) -> bool:
        return round_ % self.cfg.versioning.release_every == 0

    def evaluate(self, with_sets: bool = False) -> EvalReport:
        """The local weights on the validation set; ``with_sets``: on the named eval sets too (a release
        candidate's evaluation: the other rounds skip their cost)."""
        e = self.cfg.eval
        sets = self.eval_sets if with_sets else ()
        self.last_report = evaluate(
            self.model, self.corpus.val, self.cfg.model.seq_len, e.batches, e.batch_size, sets=sets
        )
        return self.last_report

    # --- patches (versioning/round_object.py) ----------------------------------------------------------------
    def round_object(self, round_: int, parent: str, mean_delta: list[torch.Tensor], contributors: dict) -> bytes:
        """The round just stepped as a round object: the aggregate that led from state ``parent`` to ours. Made
        before the commit step, so a peer that lost the round's majority can replay it (node/state_offers.py)."""
        from p2pmodel.versioning.round_object import encode_round

        o, c = self.outer, self.cfg.compress
        return encode_round(
            run_id=self.run_id,
            round_=round_,
            parent=parent,
            child=self.digest,
            outer={"lr": o.lr, "momentum": o.momentum, "nesterov": o.nesterov},
            codec_name=c.codec,
            block_size=c.block_size,
            contributors=contributors,
            aggregate=dict(zip(self.names, mean_delta, strict=True)),
        )

    def keep_round(self, round_: int, blob: bytes, parent: str, child: str) -> None:
        """Keep a committed round's object (ours, or the one a re-sync replayed) for patches, if the run keeps any."""
        if self.cfg.versioning.keep_rounds:
            self.patches.put_round(round_, blob, parent, child)

    def momentum_state(self) -> dict[str, torch.Tensor]:
        """The outer momentum by parameter name (parameters without a buffer yet are left out)."""
        return {n: b for n, b in zip(self.names, self.outer.momentum_buffers, strict=True) if b is not None}

    def patch_refs(self, parent: dict | None, round_: int) -> tuple[list[list] | None, str | None]:
        """For a vote on ``round_``'s candidate: the round objects from the ``parent`` tag's state to ours (None
        if this peer does not hold them all) and our outer momentum's blob id (kept so a pull can patch on)."""
        from p2pmodel.eval.digest import canonical_bytes
        from p2pmodel.versioning.votes import MAX_ROUND_REFS

        if not self.cfg.versioning.keep_rounds:
            return None, None
        momentum = self.patches.put_momentum(round_, canonical_bytes(self.momentum_state()))
        if parent is None or not 0 < round_ - parent["round"] <= MAX_ROUND_REFS:
            return None, momentum
        return self.patches.chain(parent["digest"], self.digest, parent["round"] + 1, round_), momentum

    # --- proposed states (versions propose --state, node/proposals.py) -------------------------------------
    def evaluate_state(self, state: dict[str, torch.Tensor]) -> EvalReport:
        """Evaluate another state (a proposed one) as a candidate is evaluated; ours is put back after."""
        kept = self.last_report
        self.set_local([state[n] for n in self.names])
        try:
            return self.evaluate(with_sets=True)
        finally:
            self.last_report = kept
            self.load_global_into_local()

    def schedule_adoption(self, round_: int, digest: str, version: str) -> None:
        """A quorum accepted the proposed state ``digest``: make it θ_global when round ``round_`` commits."""
        if round_ > self.round:
            self.adoption = (round_, digest, version)

    def take_adoption(self, round_: int) -> dict[str, torch.Tensor] | None:
        """The state to adopt in round ``round_`` instead of its outer step, if one is due (verified from the store)."""
        due, self.adoption = self.adoption, (self.adoption if self.adoption and self.adoption[0] > round_ else None)
        if due is None or due[0] != round_:
            return None
        log.info("round %d: adopting %s, the proposed state tagged %s", round_, due[1][:12], due[2])
        return self.store.get_state(due[1])

    # --- durability ------------------------------------------------------------------------------
    def private_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, inner_meta = self.trainer.state_tensors()
        outer = self.outer.state_dict()
        tensors.update({f"outer.{i}": b for i, b in enumerate(outer["momentum_buffers"]) if b is not None})
        return tensors, {**inner_meta, "outer_steps": outer["steps"]}

    def commit(self, round_: int, members: list[str] = (), evaluated: bool = True) -> None:
        """Store θ_global under its digest and make ``round_`` the one a restart resumes from; ``evaluated``:
        ``last_report`` is this state's (else the round joins no history: eval.every_rounds)."""
        self.digest = self.store.put_state(self.global_state())
        if evaluated and self.last_report is not None:
            self.history = [h for h in self.history if h[0] < round_][-255:] + [[round_, self.last_report.val_loss]]
        tensors, inner_meta = self.private_tensors()
        meta = {
            "inner": inner_meta,
            "run_id": self.run_id,
            "samples_total": self.samples_total,
            "counters": self.counters,
            "eval": self.last_report.as_dict() if self.last_report else None,
            "members": sorted(members),
            "history": self.history[-256:],
            "time": time.time(),
        }
        self.store.commit(round_, self.digest, tensors, meta, keep=self.cfg.versioning.keep_checkpoints)
        self.round = round_

    def restore(self) -> bool:
        """Resume from the last committed round in the store; False when there is none."""
        head = self.store.head()
        if head is None:
            return False
        meta = head["meta"]
        if meta.get("run_id") != self.run_id:
            from p2pmodel.core.errors import UsageError

            raise UsageError(
                f"data dir {self.store.root} holds run {meta.get('run_id')}, not {self.run_id}: use another --data-dir"
            )
        self.set_global(head["state"])
        private = head["private"]
        self.trainer.load_state_tensors({k: v for k, v in private.items() if k.startswith("inner.")}, meta["inner"])
        outer = self.outer.state_dict()
        outer["steps"] = meta["inner"]["outer_steps"]
        outer["momentum_buffers"] = [private.get(f"outer.{i}") for i in range(len(self.global_params))]
        self.outer.load_state_dict(outer)
        self.round, self.samples_total, self.counters = head["round"], meta["samples_total"], dict(meta["counters"])
        self.history = [list(x) for x in meta.get("history", [])]
        if meta.get("eval"):
            self.last_report = EvalReport(**meta["eval"])
        log.info("resumed from round %d (digest %s)", self.round, self.digest[:12])
        return True


def _load_fork(model: torch.nn.Module, path: str) -> None:
    """Load the state of a `versions pull` / `versions merge` directory into ``model`` (ConfigError if the
    directory is not one, its weights fail their digest, or they do not fit this model)."""
    from p2pmodel.core.errors import ConfigError
    from p2pmodel.versioning.pulled import read_pulled

    try:
        _, state = read_pulled(Path(path))
    except ValueError as e:
        raise ConfigError(f"model.init_from: {e}") from None
    own = dict(model.named_parameters())
    if set(state) != set(own) or any(state[n].shape != own[n].shape for n in own):
        missing, extra = sorted(set(own) - set(state))[:2], sorted(set(state) - set(own))[:2]
        raise ConfigError(f"model.init_from: {path} does not fit this model (missing {missing}, extra {extra})")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(state[name])
