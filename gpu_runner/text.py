"""Text that came from a job (its output, its error messages, what a check quotes of its results).

Such text is hostile like everything else a job writes: it is cut to a length before it is kept
(``bounded``) and, before it reaches a terminal, its control characters are shown rather than
obeyed (``for_terminal``): ``\\r\\x1b[2K[PASS]`` must not overwrite a FAIL line, and an OSC 52
sequence must not write the grader's clipboard. Pages need no more than Django's escaping and
``textContent`` (static/js/job.js), which never interpret either.
"""

from __future__ import annotations

import re

# C0 controls but newline and tab, DEL and C1 controls (CSI, OSC as single bytes), and the
# invisible format characters that reorder or hide text (bidi overrides, zero-width ones).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def bounded(text: object, limit: int) -> str:
    """``text`` as a string of at most about ``limit`` characters: its start and its end, where errors are."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return text
    head = limit // 4
    return f"{text[:head]}\n[... {len(text) - limit:,} characters cut ...]\n{text[len(text) - (limit - head) :]}"


def for_terminal(text: str) -> str:
    """``text`` with every control and invisible format character written out (``\\x1b``, ``\\u202e``)."""
    return CONTROL.sub(_escaped, text)


def _escaped(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class LineMarker:
    """Puts ``prefix`` before every line of a stream that arrives in arbitrary chunks."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.at_line_start = True

    def __call__(self, chunk: str) -> str:
        if not chunk:
            return chunk
        marked = (self.prefix if self.at_line_start else "") + chunk.replace("\n", "\n" + self.prefix)
        if chunk.endswith("\n"):
            marked = marked[: -len(self.prefix)]
        self.at_line_start = chunk.endswith("\n")
        return marked
