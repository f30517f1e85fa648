"""The doctor's results: the verdicts, the order of the checks and what each needs,
and how a run is printed and ends.

Pure: nothing here touches the device or the network.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional

__all__ = [
    "CHECKS",
    "EXIT_FAILED",
    "EXIT_USAGE",
    "REQUIRES",
    "CheckResult",
    "Status",
    "blocking_failure",
    "exit_code",
    "render_json",
    "render_result",
    "render_summary",
]

EXIT_FAILED = 1
EXIT_USAGE = 2


class Status(str, enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    WARN = "warn"  # passed, but something deserves attention
    FAIL = "fail"
    SKIPPED = "skipped"  # not run: a check it needs did not pass
    NOT_APPLICABLE = "n/a"  # nothing to check here (TLS on an http:// URL)


@dataclasses.dataclass(frozen=True)
class CheckResult:
    check: str
    status: Status
    detail: str
    hint: Optional[str] = None

    @property
    def ok(self) -> Optional[bool]:
        """True when nothing is wrong, False on failure, None when not run."""
        if self.status is Status.FAIL:
            return False
        if self.status is Status.SKIPPED:
            return None
        return True

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "ok": self.ok, "status": self.status.value,
                "detail": self.detail, "hint": self.hint}


# --- order and dependencies -------------------------------------------------

CHECKS: tuple[str, ...] = ("identity", "permissions", "resolve", "route", "tcp", "tls",
                           "websocket", "auth", "clock")
# What each check needs to have passed. The clock is read over the TCP path,
# not the verified TLS one, on purpose: a device clock stuck in 1970 is the
# usual reason a certificate looks "not yet valid", and it must still show.
REQUIRES: Mapping[str, tuple[str, ...]] = {
    "identity": (),
    "permissions": ("identity",),
    "resolve": ("identity",),
    "route": ("resolve",),
    "tcp": ("route",),
    "tls": ("tcp",),
    "websocket": ("tls",),
    "auth": ("websocket",),
    "clock": ("tcp",),
}


def blocking_failure(check: str, done: Mapping[str, CheckResult]) -> Optional[str]:
    """The failed check that keeps ``check`` from running, or None if it may run.

    A need that was itself skipped is followed to the failure behind it, so
    every skipped line names the one check to look at.
    """
    for need in REQUIRES[check]:
        result = done.get(need)
        if result is None:
            return need
        if result.status is Status.FAIL:
            return need
        if result.status is Status.SKIPPED:
            return blocking_failure(need, done) or need
    return None


# --- rendering ----------------------------------------------------------------

_LABELS = {Status.PASS: "[ ok ]", Status.WARN: "[warn]", Status.FAIL: "[FAIL]",
           Status.SKIPPED: "[skip]", Status.NOT_APPLICABLE: "[ -- ]"}
_NAME_WIDTH = max(len(c) for c in CHECKS)


def render_result(result: CheckResult) -> str:
    line = f"{_LABELS[result.status]} {result.check:<{_NAME_WIDTH}}  {result.detail}"
    if result.hint:
        line += f"\n{'':{len(_LABELS[result.status]) + _NAME_WIDTH + 3}}hint: {result.hint}"
    return line


def render_summary(results: Sequence[CheckResult]) -> str:
    failed = [r.check for r in results if r.status is Status.FAIL]
    skipped = sum(1 for r in results if r.status is Status.SKIPPED)
    warned = sum(1 for r in results if r.status is Status.WARN)
    if failed:
        text = f"FAILED at {failed[0]}: {len(failed)} failed"
        if skipped:
            text += f", {skipped} skipped"
        return text
    if warned:
        return f"passed with {warned} warning{'s' if warned > 1 else ''}"
    return "all checks passed"


def render_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2)


def exit_code(results: Sequence[CheckResult]) -> int:
    return EXIT_FAILED if any(r.status is Status.FAIL for r in results) else 0

