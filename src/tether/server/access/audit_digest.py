"""Repeated refusals folded into one audit record with a count, as a pure state machine.

An unauthenticated client can be refused hundreds of times a second (a wrong token,
a wrong activation code); one row each would grow the audit log without bound. So
the first refused or failed call of a kind (same actor, action, target, address,
outcome and detail) in a window is written at once, as any record is; the identical
ones after it, until the window ends, are only counted; and when the window ends one
more record says how many there were, from when to when, and which record they
repeat. Nothing written is rewritten: the chain stays append-only, the count is a
new record. A call that differs in anything recorded (another script, another
address, another status) is another kind, written at once.

Memory is bounded by ``max_kinds`` kinds per window. Past it, a refusal of an
operator (authenticated, so accountable) is still written, only no longer counted;
a refusal of an unauthenticated caller (``anonymous``, a client-chosen activation
id or node id) is counted in one "not itemised" total, so a flood of distinct
kinds costs a bounded number of rows too.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

__all__ = ["Digest", "Kind", "Summary", "kind_of"]

DEFAULT_MAX_KINDS = 1_000
# (actor, action, target, source, outcome, detail as canonical JSON)
Kind = tuple[str, str, "str | None", "str | None", str, str]


def kind_of(actor: str, action: str, target: str | None, source: str | None, outcome: str,
            detail: dict[str, Any]) -> Kind:
    return (actor, action, target, source, outcome,
            json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str))


@dataclasses.dataclass
class _Window:
    opened: float
    first_seq: int | None = None
    repeats: int = 0
    since: float = 0.0
    until: float = 0.0


@dataclasses.dataclass(frozen=True)
class Summary:
    """The record a closed window adds: ``repeats`` calls like record ``repeat_of``.

    ``kind`` is None for the "not itemised" total of unauthenticated refusals past
    ``max_kinds``.
    """

    kind: Kind | None
    repeats: int
    repeat_of: int | None
    since: float
    until: float


class Digest:
    def __init__(self, window: float, max_kinds: int = DEFAULT_MAX_KINDS) -> None:
        self.window = window
        self.max_kinds = max_kinds
        self._windows: dict[Kind, _Window] = {}
        self._overflow: _Window | None = None
        self._closed: list[Summary] = []  # ended windows a new one replaced before ``due``

    def repeat(self, kind: Kind, now: float, authenticated: bool) -> bool:
        """True: a repeat within its window, counted (write nothing now).

        False: write it now, then tell ``wrote`` its seq.
        """
        window = self._windows.get(kind)
        if window is not None and now - window.opened < self.window:
            window.repeats += 1
            window.since = window.since or now
            window.until = now
            return True
        if window is None and len(self._windows) >= self.max_kinds:
            if authenticated:
                return False  # written, not tracked: an operator answers for its calls
            if self._overflow is None:
                self._overflow = _Window(now, since=now)
            self._overflow.repeats += 1
            self._overflow.until = now
            return True
        if window is not None:  # its window ended, not yet collected by ``due``
            self._closed.append(self._summary(kind, window))
        self._windows[kind] = _Window(now)
        return False

    def wrote(self, kind: Kind, seq: int) -> None:
        window = self._windows.get(kind)
        if window is not None and window.first_seq is None:
            window.first_seq = seq

    def due(self, now: float) -> list[Summary]:
        """Windows that have ended: forgotten, and a summary for each that had repeats."""
        ended = [k for k, w in self._windows.items() if now - w.opened >= self.window]
        out, self._closed = self._closed, []
        out += [self._summary(k, self._windows.pop(k)) for k in ended]
        if self._overflow is not None and now - self._overflow.opened >= self.window:
            out.append(self._summary(None, self._overflow))
            self._overflow = None
        return [s for s in out if s.repeats]

    def drain(self) -> list[Summary]:
        """Every window, ended or not (at shutdown)."""
        return self.due(float("inf"))

    def next_due(self) -> float | None:
        """When the earliest window ends (the clock ``repeat`` was given), or None."""
        if self._closed:
            return float("-inf")
        opened = [w.opened for w in self._windows.values()]
        if self._overflow is not None:
            opened.append(self._overflow.opened)
        return min(opened) + self.window if opened else None

    def __len__(self) -> int:
        return len(self._windows)

    @staticmethod
    def _summary(kind: Kind | None, w: _Window) -> Summary:
        return Summary(kind, w.repeats, w.first_seq, w.since, w.until)
