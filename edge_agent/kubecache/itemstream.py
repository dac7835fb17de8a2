# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: a LIST body split into its items as its bytes arrive, in bounded memory.

Rules:

* :class:`ItemSplitter` is fed the body in any cuts (``feed``) and ended by ``close``; each
  returns the elements of the top-level ``items`` array completed so far, decoded, in order.
  The other top-level members (``kind``, ``apiVersion``, ``metadata``) are kept, decoded, in
  ``envelope``; they may come before or after ``items`` (the API server writes them first).
* Bounded: the undecoded text held is one fed cut plus at most ``max_item_chars`` of one
  unfinished item or envelope member. Anything longer, a body that is not one JSON object
  with one ``items`` array of objects, bad UTF-8, or bytes after the closing brace raise
  :class:`ListFormatError` (a ValueError). Once it raised, the splitter is spent.
* Every value is decoded by the stdlib's decoder (``json.JSONDecoder.raw_decode``, in C), so
  an item decodes exactly as ``json.loads`` of the whole body would give it (64-bit integers
  stay exact). This module only finds where each value starts.
* Why not a JSON event parser: the cache needs whole items (their name and version), and
  decoding each item in one C call costs less than a Python step per token.
"""

from __future__ import annotations

import codecs
import contextlib
import enum
import json
import re
from typing import Any

__all__ = ["ItemSplitter", "ListFormatError"]

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class ListFormatError(ValueError):
    """The body is not a LIST this splitter can take apart (see the module's rules)."""


class _At(enum.Enum):
    START = "start"  # before the opening brace
    FIRST_MEMBER = "first member"  # after "{": a key or "}"
    MEMBER = "member"  # after ",": a key
    VALUE = "value"  # after "key": of an envelope member
    AFTER_MEMBER = "after member"  # "," or "}"
    ITEMS = "items"  # after "items": the "["
    FIRST_ITEM = "first item"  # after "[": an item or "]"
    ITEM = "item"  # after ",": an item
    AFTER_ITEM = "after item"  # "," or "]"
    DONE = "done"  # after the closing brace: only whitespace


class _NeedMore(Exception):  # noqa: N818 - control flow inside this module only
    pass


class ItemSplitter:
    """Splits one LIST body into items; see the module's rules."""

    def __init__(self, *, max_item_chars: int) -> None:
        """``max_item_chars``: longest item or envelope member accepted, in characters."""
        self.max_item_chars = max_item_chars
        self.envelope: dict[str, Any] = {}
        """The top-level members other than ``items``, decoded, as far as they arrived."""
        self.items_seen = 0
        """Items returned so far."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pos = 0
        self._at = _At.START
        self._key = ""
        self._had_items = False
        self._final = False

    @property
    def done(self) -> bool:
        """The closing brace of the body arrived."""
        return self._at is _At.DONE

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The items completed by ``data``."""
        return self._take(self._decode(data, final=False))

    def close(self) -> list[dict[str, Any]]:
        """The last items; raises ListFormatError if the body ended early."""
        self._final = True
        items = self._take(self._decode(b"", final=True))
        if self._at is not _At.DONE:
            raise ListFormatError(f"the body ended early (expecting {self._at.value})")
        if not self._had_items:
            raise ListFormatError("no items array")
        return items

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            return self._utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ListFormatError(f"not UTF-8: {exc.reason}") from None

    def _take(self, text: str) -> list[dict[str, Any]]:
        # Keep only the unread tail: what was read is never looked at again.
        self._text = self._text[self._pos :] + text
        self._pos = 0
        items: list[dict[str, Any]] = []
        # _value bounds what an unfinished value may hold (max_item_chars), so this holds
        # the unread tail of at most one value.
        with contextlib.suppress(_NeedMore):
            while self._step(items):
                pass
        self.items_seen += len(items)
        return items

    def _char(self) -> str:
        """The next non-blank character (not consumed); _NeedMore if none arrived yet."""
        blank = _WS.match(self._text, self._pos)
        if blank is not None:  # it always matches (maybe nothing)
            self._pos = blank.end()
        if self._pos >= len(self._text):
            if self._final:
                raise ListFormatError(f"the body ended early (expecting {self._at.value})")
            raise _NeedMore
        return self._text[self._pos]

    def _value(self) -> Any:  # noqa: ANN401 - any JSON value
        """Decode the value at the cursor, or _NeedMore if it may be unfinished."""
        try:
            value, end = _DECODER.raw_decode(self._text, self._pos)
        except json.JSONDecodeError as exc:
            unread = len(self._text) - self._pos
            if self._final or unread > self.max_item_chars:
                raise ListFormatError(f"bad JSON ({exc.msg}) or a value over the limit") from None
            raise _NeedMore from None
        if end >= len(self._text) and not self._final and not isinstance(value, dict | list | str):
            raise _NeedMore  # a number or literal at the end may go on in the next cut
        self._pos = end
        return value

    def _expect(self, allowed: str) -> str:
        char = self._char()
        if char not in allowed:
            raise ListFormatError(f"expected one of {allowed!r} ({self._at.value}), got {char!r}")
        self._pos += 1
        return char

    def _step(self, items: list[dict[str, Any]]) -> bool:  # noqa: C901 - one state table
        """One move of the state machine; False when nothing is left to read."""
        at = self._at
        if at is _At.START:
            self._expect("{")
            self._at = _At.FIRST_MEMBER
        elif at in {_At.FIRST_MEMBER, _At.MEMBER}:
            if at is _At.FIRST_MEMBER and self._char() == "}":
                self._pos += 1
                self._at = _At.DONE
                return True
            self._member_key()
        elif at is _At.VALUE:
            self._char()  # past the blanks: raw_decode takes none before a value
            self.envelope[self._key] = self._value()
            self._at = _At.AFTER_MEMBER
        elif at is _At.AFTER_MEMBER:
            self._at = _At.MEMBER if self._expect(",}") == "," else _At.DONE
        elif at is _At.ITEMS:
            self._expect("[")
            self._at = _At.FIRST_ITEM
        elif at in {_At.FIRST_ITEM, _At.ITEM}:
            if at is _At.FIRST_ITEM and self._char() == "]":
                self._pos += 1
                self._at = _At.AFTER_MEMBER
                return True
            if self._char() != "{":
                raise ListFormatError("an item that is not a JSON object")
            items.append(self._value())
            self._at = _At.AFTER_ITEM
        elif at is _At.AFTER_ITEM:
            self._at = _At.ITEM if self._expect(",]") == "," else _At.AFTER_MEMBER
        else:  # DONE: only whitespace may follow
            try:
                char = self._char()
            except (_NeedMore, ListFormatError):
                return False
            raise ListFormatError(f"{char!r} after the end of the body")
        return True

    def _member_key(self) -> None:
        """Read ``"key":`` as one move (nothing is consumed unless both arrived)."""
        start = self._pos
        if self._char() != '"':
            raise ListFormatError("a member name that is not a string")
        key = self._value()
        try:
            self._expect(":")
        except _NeedMore:
            self._pos = start
            raise
        if key == "items":
            if self._had_items:
                raise ListFormatError("two items arrays")
            self._had_items = True
            self._at = _At.ITEMS
        else:
            self._key = key
            self._at = _At.VALUE
