"""Composition root: the only package that knows compute and network together (docs/architecture.md).

peer.py          a Peer's state (θ_global, model, optimizers, store), commit and restore
round.py         one outer round, written like the loop of DiLoCo; takes an ``Exchange``
exchange.py      the Exchange protocol, ExchangeOutcome and the solo exchange
swarm_link.py    the swarm's exchange: owns the DHT, the averager, gossip, blob server; wires the parts below
pace.py          "ready"/"leave": when a round closes, who announced it, who left
commit.py        the commit step among the round's participants (majority digest)
state_offers.py  serving committed states, re-sync and catch-up downloads (verified)
state_package.py the downloadable round state (θ_global + outer momentum), verified on arrival
release.py       release candidates, votes over gossip, tags into the ledger and the DHT index
status.py        the local /status (JSON) and /metrics (Prometheus) endpoint
runner.py        lifecycle: uvloop, signals, progress, the JSON summary
light.py         the CLI's light client: runs, tags, history and tagged states from the swarm
launch.py        a local swarm of separate processes (demo, tests)
"""
