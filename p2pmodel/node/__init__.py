"""TODO: node"""
