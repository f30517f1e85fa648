"""Target expressions an operator writes, parsed without touching the store.

``mi-0123456789abcdef0`` (one node), ``tag:site=north`` (every node with that
tag), ``tag:site=north,tag:role=gw`` (every node with all of those tags) and
``all`` (every registered node), ``name:web-1`` or plain ``web-1`` (the one node
of that name). Several targets are a union (OR); the terms of one target joined
by ``,tag:`` are an intersection (AND).

A name stands for one node: a name several readable nodes share is refused with
their ids (api/visibility.py), so a typed name never fans out by surprise. A plain
word is a name unless it is ``all``, a node id or starts ``tag:``/``name:``, and
has no ``:`` (``NAME:PATH`` in ``tether cp``); any other name is ``name:NAME``.

A comma inside a tag's value stays part of the value (``tag:zone=a,b`` is one
tag): only a comma followed by ``tag:`` starts another term, so a target that
meant one tag before AND existed means the same now. A value that itself holds
``,tag:`` followed by ``key=value`` cannot be written as a target.
"""

from __future__ import annotations

import dataclasses
import re

from tether.protocol.ids import is_node_id

# Where one term of a conjunction ends and the next begins.
_AND = re.compile(r",(?=tag:)")
_TERM = re.compile(r"tag:[^=]+=.*", re.DOTALL)

Tag = tuple[str, str]


class TargetError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Targets:
    node_ids: frozenset[str] = frozenset()
    # Each member is a conjunction: the nodes that have every one of its tags.
    tag_sets: frozenset[tuple[Tag, ...]] = frozenset()
    everything: bool = False
    names: frozenset[str] = frozenset()


def parse_tag(text: str) -> Tag:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise TargetError(f"expected key=value, got {text!r}")
    return key, value


def parse_tag_set(expr: str) -> tuple[Tag, ...]:
    """``tag:a=1,tag:b=2`` as its tags, sorted and without repeats (the AND of them).

    Total over what the OpenAPI document allows (``tag:[^=]+=.*``, models.Target):
    when a piece after a ``,tag:`` is not itself ``key=value`` (``tag:a=1,tag:b``),
    the whole is one tag, as it was before AND, rather than a 400 for a target the
    document promised.
    """
    terms = _AND.split(expr)
    if all(_TERM.fullmatch(t) for t in terms):
        return tuple(sorted({parse_tag(t[4:]) for t in terms}))
    return (parse_tag(expr[4:]),)


def parse_targets(exprs: list[str]) -> Targets:
    if not exprs:
        raise TargetError("at least one target is needed (a node id or name, tag:key=value "
                          "or all)")
    ids: set[str] = set()
    tag_sets: set[tuple[Tag, ...]] = set()
    everything = False
    names: set[str] = set()
    for expr in exprs:
        if expr == "all":
            everything = True
        elif expr.startswith("tag:"):
            tag_sets.add(parse_tag_set(expr))
        elif is_node_id(expr):
            ids.add(expr)
        elif expr.startswith("name:") and len(expr) > 5:
            names.add(expr[5:])
        elif expr and ":" not in expr:
            names.add(expr)
        else:
            raise TargetError(f"bad target {expr!r}: use a node id (mi- and 17 hex digits) or "
                              "name (name:NAME when it holds a colon), tag:key=value "
                              "(tag:k=v,tag:k2=v2 for nodes with both) or all")
    return Targets(frozenset(ids), frozenset(tag_sets), everything, frozenset(names))
