"""A file name's three text forms: the name to open, a lossless form any UTF-8 text store holds, and the
name for people.

File names are kept losslessly. A name that is not valid UTF-8 (`caf\\xe9.png` from an old archive or
a Samba share) reaches Python as a str with surrogate escapes, which UTF-8 text (the cache's index,
JSON) cannot hold. `stored_path` gives every name a text form such a store can hold: a valid UTF-8 name
is stored as it is (so every existing cache reads as before), any other as a NUL followed by its
`unicode_escape` spelling. No real path contains a NUL, so the two kinds never collide, and a stored
form maps to itself. `fs_path` gives back the name to open; `display_path` the name for people (each
byte that is not UTF-8 as \\xNN, as `ls -b` shows it): messages, `--json` and `te predict`'s output
files use that. The data sources, the cache and every command show names through it.
"""

from __future__ import annotations

_STORED_ESCAPED = "\x00"  # starts the stored form of a name that is not valid UTF-8 (never in a real path)


def is_text(value: str) -> bool:
    """True when `value` is valid Unicode text: no surrogate escapes of bytes that are not UTF-8."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def stored_path(path: str) -> str:
    """The lossless text form of a file name, valid UTF-8 (see the module docstring); idempotent."""
    if is_text(path):
        return path
    return _STORED_ESCAPED + path.encode("unicode_escape").decode("ascii")  # surrogate escapes of non-UTF-8 bytes


def fs_path(path: str) -> str:
    """The name to open from a name or its stored form (`stored_path`'s inverse)."""
    if path.startswith(_STORED_ESCAPED):
        return path[len(_STORED_ESCAPED):].encode("ascii").decode("unicode_escape")
    return path


def display_path(path: str) -> str:
    """A name (or its stored form) for people: valid UTF-8, each byte that is not UTF-8 shown as \\xNN."""
    name = fs_path(path)
    if is_text(name):
        return name
    raw = name.encode("utf-8", "surrogateescape") if _only_escapes(name) else name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def _only_escapes(name: str) -> bool:
    """True when every surrogate in `name` is one of os.fsdecode's byte escapes (U+DC80..U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in name)
