"""llm4all.data"""
