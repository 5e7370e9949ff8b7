"""Composition root: the only package that knows compute and network together.

peer.py          a Peer's state (θ_global, model, optimizers, store), commit and restore
round.py         one outer round, written like the loop in DESIGN.md
exchange.py      ExchangeOutcome and the solo exchange; swarm_link.py is the swarm's (same methods)
swarm_link.py    DHT, deterministic averaging, round pace, majority-digest commit, re-sync, state offers
state_package.py the downloadable round state (θ_global + outer momentum), verified on arrival
release.py       release candidates, votes over gossip, tags into the ledger and the DHT index
status.py        the local /status (JSON) and /metrics (Prometheus) endpoint
runner.py        lifecycle: uvloop, signals, progress, the JSON summary
light.py         the CLI's light client: runs, tags, history and tagged states from the swarm
launch.py        a local swarm of separate processes (demo, tests)
"""
