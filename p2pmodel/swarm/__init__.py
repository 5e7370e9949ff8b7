"""TODO: swarm"""
