"""Every registry, with the modules (or packages: all their submodules) that fill it.

Importing this module defines the registries cheaply; entry modules are imported only when a
registry is listed or looked up. Plug-in modules register with e.g.
``@SIGNALS.register("char_entropy")``. Add a registry here when a new kind of plug-in appears.
"""

from llm4all.registry import Registry

MODELS = Registry("models", modules=("llm4all.models.load",))
SIGNALS = Registry("signals", modules=("llm4all.curate.signals",))
DEDUPERS = Registry("dedupers", modules=("llm4all.curate.dedup",))
CHINCHILLA_CONSTANTS = Registry("scaling_laws", modules=("llm4all.plan.scaling",))
HARDWARE = Registry("hardware", modules=("llm4all.plan.hardware",))
SELECTORS = Registry("selectors", modules=("llm4all.curate.select",))
FILTERS = Registry("filters", modules=("llm4all.curate.filters",))
CURRICULA = Registry("curricula", modules=("llm4all.curate.curriculum",))
MIXTURES = Registry("mixtures", modules=("llm4all.curate.mixture",))
OPTIMIZERS = Registry("optimizers", modules=("llm4all.train.optim",))
PRESETS = Registry("presets", modules=("llm4all.models.presets",))
KD_LOSSES = Registry("kd_losses", modules=("llm4all.distill.losses",))
QUANTIZERS = Registry("quantizers", modules=("llm4all.compress.quantize",))
PRUNERS = Registry("pruners", modules=("llm4all.compress.prune",))
FACTORIZERS = Registry("factorizers", modules=("llm4all.compress.lowrank",))
ENGINES = Registry("engines", modules=("llm4all.serve.engines",))
