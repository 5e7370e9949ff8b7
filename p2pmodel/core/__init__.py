"""Leaf utilities shared by every package: the exception tree (errors), versioned msgpack envelopes (wire),
content hashing (ids), logging setup (logging). Imports neither torch nor the network."""
