"""Target expressions an operator writes, parsed without touching the store.

``mi-0123456789abcdef0`` (one node), ``tag:site=north`` (every node with that
tag) and ``all`` (every registered node). Several targets are a union.
"""

from __future__ import annotations

import dataclasses

from tether.protocol.ids import is_node_id


class TargetError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Targets:
    node_ids: frozenset[str] = frozenset()
    tags: frozenset[tuple[str, str]] = frozenset()
    everything: bool = False


def parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise TargetError(f"expected key=value, got {text!r}")
    return key, value


def parse_targets(exprs: list[str]) -> Targets:
    if not exprs:
        raise TargetError("at least one target is needed (a node id, tag:key=value or all)")
    ids: set[str] = set()
    tags: set[tuple[str, str]] = set()
    everything = False
    for expr in exprs:
        if expr == "all":
            everything = True
        elif expr.startswith("tag:"):
            tags.add(parse_tag(expr[4:]))
        elif is_node_id(expr):
            ids.add(expr)
        else:
            raise TargetError(f"bad target {expr!r}: use a node id (mi- and 17 hex digits), "
                              "tag:key=value or all")
    return Targets(frozenset(ids), frozenset(tags), everything)
