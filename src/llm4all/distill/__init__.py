"""llm4all.distill"""
