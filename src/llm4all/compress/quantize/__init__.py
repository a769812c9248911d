"""Quantizers: each module registers its entries in ``llm4all.catalog.QUANTIZERS``."""
