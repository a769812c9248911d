"""The packed checkpoint format and the modules it loads into (weights that stay packed).

``save_packed`` / ``load_packed`` write and read a packed checkpoint (``checkpoint.py``);
``QuantLinear`` (``qlinear.py``), ``Int8Linear`` / ``TernaryLinear`` (``int8.py``),
``LowRankLinear`` (``lowrank.py``) and ``PackedEmbedding`` (``embedding.py``) run it;
``formats.py`` holds the bit layouts, ``kernels.py`` the CPU weight-only kernels, ``dense.py``
turns a packed model back into plain Linears, ``sparse.py`` keeps pruned weights at zero.
Loading a model never needs ``llm4all.compress``: the algorithms that make these checkpoints
live there, above this package.
"""

from llm4all.models.packed.checkpoint import QUANT_FILE, is_packed, load_packed, read_quant_file, save_packed

__all__ = ["QUANT_FILE", "is_packed", "load_packed", "read_quant_file", "save_packed"]
