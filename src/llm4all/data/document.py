"""The Document: the unit every data stage reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """One text with a stable id and free-form metadata (source, lang, licence, ...)."""

    id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = field(default="", compare=False)
    """where it was read ("FILE:LINE", "FILE:row N"), for error messages; not written out"""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "meta": self.meta}
