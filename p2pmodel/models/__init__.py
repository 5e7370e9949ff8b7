"""TODO: models"""
