"""What ``trun`` prints of the service's text, made safe for a terminal.

Everything an instance sends (job ids, states, args, ``/healthz`` fields, error messages)
goes through `visible` before it reaches stdout or stderr; only a command's own output is
passed through as it is. Whoever submits a job chooses its args, and whoever reads ``trun
ps`` may be an admin on a terminal that acts on escape sequences (clear the screen, move
the cursor, retitle the window, write to the clipboard), so every character a terminal or
a text renderer acts on is written as an escape, the way Python writes it in a literal
(``\\n``, ``\\x1b``, ``\\x9b``, ``\\u202e``): the C0 controls, DEL, the C1 controls, the line
and paragraph separators, the bidirectional overrides and isolates (which reorder what a
line shows), and lone surrogates (which no terminal encoding can write). A backslash is
left as it is, so `visible` of its own result changes nothing; ``--json`` gives the exact
text.
"""

from __future__ import annotations

import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def visible(text: object) -> str:
    """``text`` (made a string) as one line with nothing a terminal would act on."""
    line = text if isinstance(text, str) else str(text)
    return _UNSAFE.sub(_escaped, line)
