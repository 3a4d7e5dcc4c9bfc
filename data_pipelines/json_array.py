"""The elements of a JSON-array file, one at a time, in bounded memory (LLaMA-Factory's `.json` datasets).

`array_elements` reads the file in chunks and cuts it at the array's top-level commas with a scanner that tracks
strings and bracket depth only, so memory holds one element and a chunk, however long the array. Each element's
text is checked with `json.loads`; a syntax error is reported with its character offset and line in the file, and
scanning resumes at the next element (the bracket structure, not the bad element's content, finds it), so one bad
record does not hide the rest. Element texts are returned as they are in the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

CHUNK_CHARS = 1 << 20
_STRUCTURE = re.compile(r'[\[\]{}",]')
_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # after an opening quote, up to its closing quote
_SCALAR = re.compile(r'[^,\]\s]*')
_SPACE = re.compile(r"\s*")


@dataclass
class Element:
    index: int
    line: int  # 1-based line of the element's first character
    text: str | None  # None: the element could not be read
    error: str = ""


def starts_with_array(path: str) -> bool:
    """Whether the file's first non-blank character (after a BOM) opens a JSON array."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        while chunk := f.read(4096):
            stripped = chunk.lstrip()
            if stripped:
                return stripped[0] == "["
    return False


class _Buffer:
    """The unread part of a file with absolute character offsets and line numbers."""

    def __init__(self, f) -> None:
        self.f = f
        self.text = ""
        self.base = 0  # absolute offset of text[0]
        self.eof = False
        self._counted = 0  # text[:_counted] has been counted into _line
        self._line = 1

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(CHUNK_CHARS)
        if not chunk:
            self.eof = True
            return False
        self.text += chunk
        return True

    def line_at(self, pos: int) -> int:
        self._line += self.text.count("\n", self._counted, pos)
        self._counted = pos
        return self._line

    def drop_before(self, pos: int) -> int:
        """Forget text before `pos` (returns the new position of `pos`: 0)."""
        self.line_at(pos)
        self.text = self.text[pos:]
        self.base += pos
        self._counted = 0
        return 0

    def skip_space(self, pos: int) -> int:
        while True:
            pos = _SPACE.match(self.text, pos).end()
            if pos < len(self.text) or not self.more():
                return pos


def _element_end(buf: _Buffer, start: int) -> tuple[int, str]:
    """End (exclusive) of the value starting at `start`, or (end of file, reason) when it never closes."""
    text_first = buf.text[start]
    if text_first not in "{[\"":
        while True:
            end = _SCALAR.match(buf.text, start).end()
            if end < len(buf.text) or not buf.more():
                return end, ""
    depth, pos = 0, start
    while True:
        m = _STRUCTURE.search(buf.text, pos)
        if m is None:
            if not buf.more():
                return len(buf.text), "the file ends inside this element"
            continue
        c, at = m.group(), m.start()
        if c == '"':
            s = _STRING_REST.match(buf.text, at + 1)
            if s is None:
                if not buf.more():
                    return len(buf.text), "the file ends inside a string"
                pos = at
                continue
            pos = s.end()
            if depth == 0:
                return pos, ""
        elif c in "{[":
            depth += 1
            pos = at + 1
        elif c in "}]":
            depth -= 1
            pos = at + 1
            if depth <= 0:
                return pos, ""
        else:
            pos = at + 1


def _where(buf: _Buffer, pos: int) -> str:
    return f"character {buf.base + pos} (line {buf.line_at(pos)})"


def array_elements(path: str) -> Iterator[Element]:
    """Every element of the JSON array in `path`; unreadable ones carry `error` (file offsets and lines)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        buf = _Buffer(f)
        pos = buf.skip_space(0)
        if pos >= len(buf.text) or buf.text[pos] != "[":
            yield Element(0, buf.line_at(pos), None, f"not a JSON array: expected '[' at {_where(buf, pos)}")
            return
        pos, index = buf.skip_space(pos + 1), 0
        if pos < len(buf.text) and buf.text[pos] == "]":
            yield from _after_array(buf, pos + 1, index)
            return
        while True:
            if pos >= len(buf.text):
                yield Element(index, buf.line_at(pos), None, f"the array is not closed: the file ends at "
                              f"{_where(buf, pos)}")
                return
            if pos > CHUNK_CHARS:
                pos = buf.drop_before(pos)
            line = buf.line_at(pos)
            if buf.text[pos] in ",]":
                yield Element(index, line, None, f"expected a value at {_where(buf, pos)}, found "
                              f"{buf.text[pos]!r}")
                end, problem = pos, ""
            else:
                end, problem = _element_end(buf, pos)
                yield _checked(buf, index, pos, end, line, problem)
                if problem:  # the file ended inside it
                    return
            index += 1
            pos = buf.skip_space(end)
            if pos < len(buf.text) and buf.text[pos] == ",":
                pos = buf.skip_space(pos + 1)
                if pos < len(buf.text) and buf.text[pos] == "]":
                    yield Element(index, buf.line_at(pos), None, f"trailing comma before ']' at {_where(buf, pos)}")
                    yield from _after_array(buf, pos + 1, index + 1)
                    return
            elif pos < len(buf.text) and buf.text[pos] == "]":
                yield from _after_array(buf, pos + 1, index)
                return
            elif pos < len(buf.text) and not problem:
                # a missing comma: report it and read on from here (the next element keeps its index)
                yield Element(index, buf.line_at(pos), None, f"expected ',' or ']' at {_where(buf, pos)}, found "
                              f"{buf.text[pos]!r}")


def _checked(buf: _Buffer, index: int, start: int, end: int, line: int, problem: str) -> Element:
    text = buf.text[start:end]
    if problem:
        return Element(index, line, None, f"{problem} (it starts at {_where(buf, start)})")
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        return Element(index, line, None, f"{e.msg} at character {buf.base + start + e.pos} "
                       f"(line {line + e.lineno - 1})")
    return Element(index, line, text)


def _after_array(buf: _Buffer, pos: int, index: int) -> Iterator[Element]:
    pos = buf.skip_space(pos)
    if pos < len(buf.text):
        yield Element(index, buf.line_at(pos), None, f"data after the array's closing ']' at {_where(buf, pos)}")
