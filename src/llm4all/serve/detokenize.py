"""Token ids to text, one token at a time, without printing half a character or a stop string.

A byte-level BPE token can end in the middle of a UTF-8 character (SmolLM2 spells an emoji or a
CJK character in 2-4 tokens), and a SentencePiece tokenizer decodes a word's leading space
differently on its own than after the previous token. ``TokenDetokenizer`` therefore decodes
a short window of recent tokens twice, without and with the new token, and emits the
difference only when it does not end in U+FFFD (the replacement character an incomplete
UTF-8 sequence decodes to): the incremental scheme of vLLM's ``detokenize_incrementally``
and Hugging Face's ``TextStreamer``, with the window starting in the prompt so the first
token keeps its leading space. ``ByteDetokenizer`` does the same for a runtime that hands out
each token's bytes (llama.cpp), through Python's incremental UTF-8 decoder.

``StopStrings`` then holds back any text that could still become a stop string, so a stop
string split over several tokens is caught and never printed.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence

#: prompt tokens decoded before the first new token (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET)
CONTEXT_TOKENS = 5
REPLACEMENT = "\ufffd"


class TokenDetokenizer:
    """Incremental decoding through a Hugging Face tokenizer's ``decode``.

    Args:
        tokenizer: a transformers tokenizer.
        context: the prompt's token ids (only the last ``CONTEXT_TOKENS`` are used).
    """

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context[-CONTEXT_TOKENS:]) if context else []
        self.prefix_offset = 0  # the window decoded starts here
        self.read_offset = len(self.ids)  # text up to here has been emitted

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        """Add one token; return the new text that is now certain (possibly '')."""
        self.ids.append(token)
        return self._advance(final=False)

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT) and not final):
            return ""  # an incomplete character (or a token that decodes to nothing) waits
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """The text still held back at the end (a genuinely invalid byte sequence shows as U+FFFD)."""
        return self._advance(final=True) if self.read_offset < len(self.ids) else ""


class ByteDetokenizer:
    """Incremental decoding of per-token bytes (llama.cpp's ``token_to_piece``) as UTF-8.

    Args:
        token_bytes: token id -> its bytes (a piece's bytes do not depend on the tokens before
            it in llama.cpp: the space of a SentencePiece word is part of its piece).
    """

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self.token_bytes = token_bytes
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.utf8.decode(self.token_bytes(token))

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


class StopStrings:
    """Cut generated text at the first stop string, holding back what may be one's beginning.

    ``push(piece)`` returns the text that can be shown now; ``stopped`` turns true once a stop
    string has appeared, and nothing from the stop string on is ever returned.
    """

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.held = ""  # text not shown yet: a suffix that is a prefix of some stop string
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.held = True, ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self.held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def flush(self) -> str:
        """At the end of generation the held-back text was not a stop string after all."""
        text, self.held = self.held, ""
        return "" if self.stopped else text
