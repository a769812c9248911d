"""llm4all.compress"""
