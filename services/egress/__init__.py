"""services/egress"""
