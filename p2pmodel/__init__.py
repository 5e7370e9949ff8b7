"""p2pmodel: peer-to-peer DiLoCo training with quorum-tagged semantic versions.

Layout, the round and who owns what: docs/architecture.md; each subpackage's __init__ says what it holds.
"""

__version__ = "0.2.0"
# 2: "leave" messages, groups formed at the expected size, commit among the round's participants, and the
# tag rule of docs/versions.md ("Churn and partitions"): peers of protocol 1 would not verify our tags
# 3: the commit step's digests and "ready" go by direct gossip push ("direct" frames), the DHT only as fallback:
# a peer of protocol 2 would wait its commit step's whole deadline for our digests every round
PROTOCOL_VERSION = 3
