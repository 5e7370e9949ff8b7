"""Composition root: the only package that knows compute and network together.
peer.py: a Peer's state (θ_global, model, optimizers, store) and commit/restore; round.py: one outer round,
written like the loop in DESIGN.md; exchange.py: how a round's deltas are combined (alone, or with the
swarm); runner.py: lifecycle (uvloop, signals, progress, the JSON summary)."""
