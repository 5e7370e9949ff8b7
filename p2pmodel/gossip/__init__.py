"""Epidemic dissemination of signed messages (version announcements, votes, tags) over hivemind's P2P; no torch.

gossip: the Gossip object (publish / subscribe / catch_up / close), push + announce-by-id + pull, anti-entropy.
message: GossipMessage, signing and the verification order.     frames: the wire frames (push/ihave/iwant/sync).
limits: token buckets, seen-cache, recent store (all bounded).   outbox: per-peer batching sender.
transport: the unary handler on hivemind's P2P.                  config: GossipConfig, every limit and deadline.
"""

from p2pmodel.gossip.config import GossipConfig
from p2pmodel.gossip.gossip import Gossip, Handler
from p2pmodel.gossip.message import GossipMessage

__all__ = ["Gossip", "GossipConfig", "GossipMessage", "Handler"]
