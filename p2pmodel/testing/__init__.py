"""Test helpers, never imported by production code.

swarm.py  fast overrides of configs/tiny.toml, waiting on round events / log lines of a LocalSwarm, digests by round
"""
