"""
workspaced: one live Coder workspace per AI chat.
"""
