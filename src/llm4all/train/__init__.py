"""llm4all.train"""
