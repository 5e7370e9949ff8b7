"""Test helpers, never imported by production code.

swarm.py  fast overrides of configs/tiny.toml, waiting on round events / log lines of a LocalSwarm, digests by round
dht.py    real DHT peers on 127.0.0.1 whose keys are their signing identities (identity_dhts)
"""
