"""TODO: train"""
