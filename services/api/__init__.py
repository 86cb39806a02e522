"""services/api"""
