"""live/stats"""
