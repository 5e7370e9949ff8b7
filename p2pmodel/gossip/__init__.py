"""TODO: gossip"""
