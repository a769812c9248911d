"""llm4all.evaluate"""
