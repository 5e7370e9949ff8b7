"""p2pmodel: peer-to-peer DiLoCo training with quorum-tagged semantic versions.

Layout and protocols: see DESIGN.md in the shared folder; each subpackage's __init__ says what it holds.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
