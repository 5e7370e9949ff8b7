"""TODO: testing"""
