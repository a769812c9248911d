"""llm4all.report"""
