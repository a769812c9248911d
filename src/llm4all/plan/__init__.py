"""llm4all.plan"""
