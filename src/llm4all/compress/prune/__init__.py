"""Pruners: each module registers its entries in ``llm4all.catalog.PRUNERS``."""
