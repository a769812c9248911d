"""Generating text in process (generate, chat) and launching serving engines (serve)."""
