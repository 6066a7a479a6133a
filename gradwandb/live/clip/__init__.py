"""live/clip"""
