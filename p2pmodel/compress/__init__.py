"""TODO: compress"""
