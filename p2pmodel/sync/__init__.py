"""TODO: sync"""
