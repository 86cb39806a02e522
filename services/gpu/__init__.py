"""services/gpu"""
