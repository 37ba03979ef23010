"""Small checks on untrusted text that every layer shares.

Python's C{str.isdigit} is true for any Unicode digit (C{"³"}, C{"３"},
C{"٠"}), and C{int()} accepts many of them: a check written with it lets
a superscript through to an C{int()} that then raises, or a fullwidth
digit through as a number that does not look like the one stored.  Here
only the ASCII digits 0-9 are digits.

C{str.splitlines} breaks lines at more than CR and LF (VT, FF, the
separators U+001C..U+001E, NEL, U+2028, U+2029): a value that must stay
on one line (a header, a directive, a log field) is checked or flattened
against all of them.
"""

from __future__ import annotations

#: Every character C{str.splitlines} breaks a line at.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_FLATTEN = str.maketrans({c: " " for c in LINE_BREAKS})


def ascii_digits(text: str) -> bool:
    """Whether C{text} is one or more of the ASCII digits 0-9 and nothing else."""
    return text.isascii() and text.isdigit()


def ascii_int(text: str, low: int, high: int) -> int | None:
    """C{text} as an integer from C{low} to C{high} if it is written in ASCII digits, else None."""
    if not ascii_digits(text) or len(text) > 18:
        return None
    value = int(text)
    return value if low <= value <= high else None


def canonical_id(text: str) -> int | None:
    """A database id written as one would write it: ASCII digits, no sign, no leading zero."""
    if not ascii_digits(text) or len(text) > 18 or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


def one_line(text: str) -> str:
    """C{text} with every line break (see L{LINE_BREAKS}) replaced by a space."""
    return text.translate(_FLATTEN)


def is_one_line(text: str) -> bool:
    """Whether C{text} holds no line break of any kind."""
    return not any(c in LINE_BREAKS for c in text)
