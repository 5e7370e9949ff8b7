"""TODO: versioning"""
