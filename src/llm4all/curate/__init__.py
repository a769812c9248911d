"""llm4all.curate"""
