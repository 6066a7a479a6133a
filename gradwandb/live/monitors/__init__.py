"""live/monitors"""
