r"""Regular expressions that cannot backtrack: a small RE2-like engine for route matches.

Python's ``re`` backtracks, so a pattern such as ``(a+)+b`` takes exponential time on a short
path: one route could stall the gateway. This engine compiles a pattern to a Thompson NFA and
runs it as a lazily built DFA (RE2's design): every input character costs one dict lookup once
the DFA state is cached, and at most one step over the NFA's states when not, so matching is
linear in the input whatever the pattern.

Rules:

* Full match: a pattern matches the whole path or header value (as Envoy's safe regex does).
  ``^`` at the very start and ``$`` at the very end are allowed and change nothing; elsewhere
  they are refused.
* The syntax is a subset of RE2's and Python's (it means the same in both): literals, ``.``
  (any character but newline), classes ``[a-z0-9_]``, ``[^/]``, escapes ``\d \w \s`` (ASCII,
  with ``\D \W \S`` outside classes), ``\t \n \r``, an escaped punctuation character,
  groups ``( )`` and ``(?: )``, ``|``, and the quantifiers ``* + ? {n} {n,} {n,m}`` (each
  optionally followed by ``?``, which changes nothing for a yes/no match).
* Refused, with a message: backreferences, lookaround, named groups, flags, word boundaries,
  ``{`` or ``}`` not in a quantifier (escape them), a quantifier with nothing to repeat or
  after another, patterns over ``MAX_PATTERN_CHARS``, counts over ``MAX_REPEAT``, and
  patterns whose NFA needs more than ``MAX_STATES`` states (``(a{32}){32}`` does).
* The DFA cache holds at most ``MAX_DFA_STATES`` states and ``MAX_TRANSITIONS`` transitions
  per pattern; when full it starts over (the match goes on). Cost: a cached step is one dict
  lookup (well under 1 us); an uncached one is a union over the active NFA states, so the
  worst case, a pattern built to thrash the cache against input built for it, is about
  20 us per character (150 ms for 8 KiB) on CPython: linear, never exponential.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

__all__ = [
    "MAX_DFA_STATES",
    "MAX_PATTERN_CHARS",
    "MAX_REPEAT",
    "MAX_STATES",
    "MAX_TRANSITIONS",
    "Regex",
    "RegexError",
    "compile_regex",
]

MAX_PATTERN_CHARS = 256
"""Characters of one pattern: routes match paths and header values, not documents."""
MAX_REPEAT = 32
"""Largest count in ``{n,m}``: counted repetition copies the repeated part's states."""
MAX_STATES = 512
"""NFA states of one pattern (a literal of ``MAX_PATTERN_CHARS`` takes one more than that):
bounds the cost of one uncached step."""
MAX_DFA_STATES = 1024
"""Cached DFA states per pattern before the cache starts over."""
MAX_TRANSITIONS = 65_536
"""Cached transitions per pattern (inputs with many distinct characters) before it starts over."""

_META = set("()[]{}*+?|^$.\\")
_PUNCTUATION = set(string.punctuation)
_DIGITS = ((ord("0"), ord("9")),)
_WORD = ((ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("_"), ord("_")), (ord("a"), ord("z")))
_SPACE = ((9, 10), (12, 13), (32, 32))
_CLASSES = {"d": _DIGITS, "w": _WORD, "s": _SPACE}
_CONTROL = {"t": 9, "n": 10, "r": 13}
_NEWLINE = ((10, 10),)
_LATIN1 = tuple(chr(code) for code in range(256))


class RegexError(ValueError):
    """A pattern this engine does not take, and why."""


@dataclass(frozen=True, slots=True)
class _Set:
    ranges: tuple[tuple[int, int], ...]
    negated: bool = False

    def has(self, char: str) -> bool:
        code = ord(char)
        inside = any(low <= code <= high for low, high in self.ranges)
        return inside != self.negated


@dataclass(frozen=True, slots=True)
class _One:
    char_set: _Set


@dataclass(frozen=True, slots=True)
class _Cat:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Alt:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Rep:
    item: _Node
    low: int
    high: int | None


_Node = _One | _Cat | _Alt | _Rep
MAX_DEPTH = 32
"""Nested groups: the parser and the compiler recurse once per level."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def fail(self, message: str) -> RegexError:
        return RegexError(f"{message} at offset {self.pos}")

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        return char

    def parse(self) -> _Node:
        node = self.alternation()
        if self.pos != len(self.text):
            raise self.fail("unbalanced )")
        return node

    def alternation(self) -> _Node:
        branches = [self.concat()]
        while self.peek() == "|":
            self.take()
            branches.append(self.concat())
        return branches[0] if len(branches) == 1 else _Alt(tuple(branches))

    def concat(self) -> _Node:
        items: list[_Node] = []
        while (char := self.peek()) is not None and char not in "|)":
            items.append(self.repeat())
        return _Cat(tuple(items))

    def repeat(self) -> _Node:
        atom = self.atom()
        bounds = self.quantifier()
        if bounds is None:
            return atom
        if self.peek() == "?":
            self.take()  # lazy: the same yes/no answer
        if self.peek() in ("*", "+", "?", "{"):
            raise self.fail("a quantifier may not follow another")
        return _Rep(atom, *bounds)

    def quantifier(self) -> tuple[int, int | None] | None:
        char = self.peek()
        simple = {"*": (0, None), "+": (1, None), "?": (0, 1)}
        if char in simple:
            self.take()
            return simple[char]
        if char != "{":
            return None
        end = self.text.find("}", self.pos)
        if end < 0:
            raise self.fail("{ without } (escape a literal {)")
        body = self.text[self.pos + 1 : end]
        low_text, comma, high_text = body.partition(",")
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise self.fail("a count must be {n}, {n,} or {n,m} (escape a literal {)")
        low = int(low_text)
        high = None if comma and not high_text else int(high_text or low_text)
        if low > MAX_REPEAT or (high is not None and (high > MAX_REPEAT or high < low)):
            raise self.fail(f"counts must be 0..{MAX_REPEAT} with n <= m")
        self.pos = end + 1
        return low, high

    def atom(self) -> _Node:
        char = self.take()
        if char == "(":
            return self.group()
        if char == "[":
            return _One(self.char_class())
        if char == ".":
            return _One(_Set(_NEWLINE, negated=True))
        if char == "\\":
            return _One(self.escape(in_class=False))
        if char in "*+?":
            raise self.fail("nothing to repeat")
        if char in "{}":
            raise self.fail("escape a literal { or }")
        if char in "^$":
            raise self.fail("^ and $ only at the very start and end")
        if char == ")":
            raise self.fail("unbalanced )")
        return _One(_Set(((ord(char), ord(char)),)))

    def group(self) -> _Node:
        if self.text.startswith("?:", self.pos):
            self.pos += 2
        elif self.peek() == "?":
            raise self.fail("only (...) and (?:...) groups (no lookaround, names or flags)")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"groups nest at most {MAX_DEPTH} deep")
        node = self.alternation()
        if self.peek() != ")":
            raise self.fail("missing )")
        self.take()
        self.depth -= 1
        return node

    def escape(self, *, in_class: bool) -> _Set:
        if self.peek() is None:
            raise self.fail("trailing \\")
        char = self.take()
        if char in _CLASSES:
            return _Set(_CLASSES[char])
        if char.lower() in _CLASSES and not in_class:
            return _Set(_CLASSES[char.lower()], negated=True)
        if char in _CONTROL:
            code = _CONTROL[char]
            return _Set(((code, code),))
        if char in _PUNCTUATION:
            return _Set(((ord(char), ord(char)),))
        raise self.fail(f"unsupported escape \\{char}")

    def char_class(self) -> _Set:
        negated = self.peek() == "^"
        if negated:
            self.take()
        ranges: list[tuple[int, int]] = []
        while True:
            char = self.peek()
            if char is None:
                raise self.fail("missing ]")
            if char == "]":
                if not ranges:
                    raise self.fail("empty class (escape a literal ])")
                self.take()
                break
            ranges.extend(self.class_item())
        return _Set(tuple(ranges), negated=negated)

    def class_item(self) -> tuple[tuple[int, int], ...]:
        char = self.take()
        if char == "\\":
            found = self.escape(in_class=True)
            if len(found.ranges) > 1 or found.ranges[0][0] != found.ranges[0][1]:
                if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                    raise self.fail("a range cannot start at a class escape")
                return found.ranges
            low = found.ranges[0][0]
        elif char == "[":
            raise self.fail("escape a literal [ in a class")
        else:
            low = ord(char)
        if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
            self.take()
            end = self.take()
            if end == "\\":
                found = self.escape(in_class=True)
                if found.ranges[0][0] != found.ranges[0][1] or len(found.ranges) > 1:
                    raise self.fail("a range must end in one character")
                high = found.ranges[0][0]
            else:
                high = ord(end)
            if high < low:
                raise self.fail("a range must go up")
            return ((low, high),)
        return ((low, low),)


class _Nfa:
    """Thompson NFA: state i is ``sets[i]`` (consume one char) or a split (``sets[i]`` None)."""

    def __init__(self) -> None:
        self.sets: list[_Set | None] = []
        self.outs: list[list[int]] = []

    def state(self, char_set: _Set | None) -> int:
        if len(self.sets) >= MAX_STATES:
            raise RegexError(f"the pattern is too complex (more than {MAX_STATES} states)")
        self.sets.append(char_set)
        self.outs.append([])
        return len(self.sets) - 1

    def build(self, node: _Node, follow: int) -> int:
        """States for ``node`` that continue at ``follow``; returns the entry state."""
        match node:
            case _One(char_set=char_set):
                entry = self.state(char_set)
                self.outs[entry].append(follow)
                return entry
            case _Cat(items=items):
                for item in reversed(items):
                    follow = self.build(item, follow)
                return follow
            case _Alt(items=items):
                split = self.state(None)
                self.outs[split].extend(self.build(item, follow) for item in items)
                return split
            case _Rep(item=item, low=low, high=None):  # item{low,}: low copies, then a loop
                loop = self.state(None)
                self.outs[loop].extend([self.build(item, loop), follow])
                return self._copies(item, low, loop)
            case _Rep(item=item, low=low, high=int(high)):  # then high - low optional copies
                for _ in range(high - low):
                    split = self.state(None)
                    self.outs[split].extend([self.build(item, follow), follow])
                    follow = split
                return self._copies(item, low, follow)
        raise AssertionError(node)  # pragma: no cover - the match is exhaustive

    def _copies(self, item: _Node, count: int, follow: int) -> int:
        for _ in range(count):
            follow = self.build(item, follow)
        return follow


class Regex:
    """A compiled pattern: ``fullmatch(text)`` in time linear in ``len(text)``.

    A DFA state is the set of NFA states that consume a character (splits are followed ahead
    of time: ``_ahead[i]`` is what state ``i`` reaches without consuming), plus ``accept``.
    """

    def __init__(self, pattern: str, nfa: _Nfa, start: int, accept: int) -> None:
        self.pattern = pattern
        self._nfa = nfa
        self._accept = accept
        self._ahead = [self._closure(state) for state in range(len(nfa.sets))]
        # Latin-1 characters each consuming state takes: a set lookup instead of range scans.
        memo: dict[_Set, frozenset[str]] = {}
        self._latin1 = [
            frozenset()
            if char_set is None
            else memo.setdefault(char_set, frozenset(c for c in _LATIN1 if char_set.has(c)))
            for char_set in nfa.sets
        ]
        self._start_set = self._ahead[start]
        self._reset()

    def _reset(self) -> None:
        self._ids: dict[frozenset[int], int] = {}
        self._states: list[frozenset[int]] = []
        self._moves: list[dict[str, int]] = []
        self._transitions = 0
        self._start = self._intern(self._start_set)

    def _intern(self, states: frozenset[int]) -> int:
        found = self._ids.get(states)
        if found is None:
            found = self._ids[states] = len(self._states)
            self._states.append(states)
            self._moves.append({})
        return found

    def _closure(self, state: int) -> frozenset[int]:
        """The consuming states (and ``accept``) ``state`` reaches without consuming."""
        seen: set[int] = set()
        found: set[int] = set()
        stack = [state]
        while stack:
            here = stack.pop()
            if here in seen:
                continue
            seen.add(here)
            if self._nfa.sets[here] is None and here != self._accept:
                stack.extend(self._nfa.outs[here])
            else:
                found.add(here)
        return frozenset(found)

    def _takes(self, state: int, char: str) -> bool:
        if char <= "\xff":
            return char in self._latin1[state]
        char_set = self._nfa.sets[state]
        return char_set is not None and char_set.has(char)

    def _step(self, current: int, char: str) -> int:
        outs, ahead = self._nfa.outs, self._ahead
        target = frozenset().union(
            *(
                ahead[out]
                for state in self._states[current]
                if self._takes(state, char)
                for out in outs[state]
            )
        )
        if len(self._states) >= MAX_DFA_STATES or self._transitions >= MAX_TRANSITIONS:
            self._reset()
            return self._intern(target)
        following = self._intern(target)
        self._moves[current][char] = following
        self._transitions += 1
        return following

    def fullmatch(self, text: str) -> bool:
        current = self._start
        for char in text:
            following = self._moves[current].get(char)
            if following is None:
                following = self._step(current, char)
            current = following
            if not self._states[current]:
                return False
        return self._accept in self._states[current]


def compile_regex(pattern: object) -> Regex:
    """``pattern`` compiled, or ``RegexError`` saying what this engine does not take."""
    if not isinstance(pattern, str) or not 0 < len(pattern) <= MAX_PATTERN_CHARS:
        raise RegexError(f"must be a pattern of 1..{MAX_PATTERN_CHARS} characters")
    body = pattern.removeprefix("^")
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    node = _Parser(body).parse()
    nfa = _Nfa()
    accept = nfa.state(None)  # a split with no way out: reaching it is the match
    start = nfa.build(node, accept)
    return Regex(pattern, nfa, start, accept)
