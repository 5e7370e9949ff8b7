"""TODO: data"""
