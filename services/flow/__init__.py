"""services/flow"""
