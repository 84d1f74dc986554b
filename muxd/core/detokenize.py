"""Incremental detokenization and stop strings (no torch).

Decoding the whole output every step costs O(n^2); decoding only a short
window costs O(1) per token but must wait while the window ends in a partial
UTF-8 character (``\\ufffd``). This is the prefix/read offset method of
Hugging Face TGI and vLLM. Stop strings are matched on the text, and the
text is cut before the match, as the OpenAI API does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class IncrementalDetokenizer:
    """Feed token ids one step at a time; ``text`` is the output so far.

    ``add`` returns only text that can no longer become part of a stop
    string, so a stream never shows text that a later stop would cut;
    ``flush`` returns the rest when the sequence ends.
    """

    def __init__(
        self,
        decode: Callable[[list[int]], str],
        stop: Sequence[str] = (),
        prompt_tail: list[int] | None = None,
    ) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        # A few prompt tokens give the first output token its left context
        # (some tokenizers decode a leading space differently on its own).
        self._ids: list[int] = list(prompt_tail or [])
        self._prefix = 0
        self._read = len(self._ids)
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text that is now safe to show."""
        if self.stopped:
            return ""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            self._append(full_text[len(prefix_text) :])
        return self._take(final=self.stopped)

    def flush(self) -> str:
        """The text held back so far (call when the sequence has finished)."""
        return self._take(final=True)

    def _append(self, delta: str) -> None:
        before = len(self.text)
        self.text += delta
        if self._stop:
            lo = max(0, before - self._hold)  # a new match ends in the new text
            hits = [i for s in self._stop if (i := self.text.find(s, lo)) != -1]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True

    def _take(self, final: bool) -> str:
        end = len(self.text) if final else max(self._emitted, len(self.text) - self._hold)
        out = self.text[self._emitted : end]
        self._emitted = end
        return out
