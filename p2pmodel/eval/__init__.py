"""TODO: eval"""
