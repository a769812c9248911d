"""Models: load by name, HF directory or GGUF; presets; student initialisation."""

from llm4all.models.load import load, load_tokenizer, resolve

__all__ = ["load", "load_tokenizer", "resolve"]
