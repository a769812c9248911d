"""llm4all: plan, curate, train, distil, compress, evaluate and ship small language models.

Every stage is a plain function (``llm4all.data.tokenize.main``, ...) and a CLI command
(``llm4all tokenize``); ``llm4all run RECIPE`` chains them. See README.md.
"""

from llm4all.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
