"""llm4all.export"""
