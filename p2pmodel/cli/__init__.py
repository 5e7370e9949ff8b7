"""TODO: cli"""
