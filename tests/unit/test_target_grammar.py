"""Target expressions: OR across targets, AND within one (``tag:a=1,tag:b=2``),
node names (``web-1``, ``name:cam:2``).

Parsed without a store (dispatch/targets.py); what they resolve to is tested
against a real server in tests/integration/test_targets.py.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.server.api import models
from tether.server.dispatch.targets import TargetError, Targets, parse_targets

NODE = "mi-0123456789abcdef0"


def test_several_targets_are_a_union() -> None:
    t = parse_targets([NODE, "tag:site=a", "tag:role=gw"])
    assert t == Targets(frozenset({NODE}), frozenset({(("site", "a"),), (("role", "gw"),)}))


def test_tags_joined_by_comma_tag_are_an_intersection() -> None:
    t = parse_targets(["tag:site=a,tag:role=gw"])
    assert t.tag_sets == frozenset({(("role", "gw"), ("site", "a"))})


def test_a_conjunction_is_sorted_and_without_repeats() -> None:
    t = parse_targets(["tag:role=gw,tag:site=a,tag:role=gw", "tag:site=a,tag:role=gw"])
    assert t.tag_sets == frozenset({(("role", "gw"), ("site", "a"))})


def test_a_comma_inside_a_value_stays_in_the_value() -> None:
    assert parse_targets(["tag:zone=a,b"]).tag_sets == frozenset({(("zone", "a,b"),)})
    assert parse_targets(["tag:zone=a,b,tag:x=1"]).tag_sets == frozenset(
        {(("x", "1"), ("zone", "a,b"))})


def test_a_piece_that_is_not_key_value_keeps_the_old_single_tag_meaning() -> None:
    assert parse_targets(["tag:a=1,tag:b"]).tag_sets == frozenset({(("a", "1,tag:b"),)})
    assert parse_targets(["tag:a=1,tag:=x"]).tag_sets == frozenset({(("a", "1,tag:=x"),)})


@pytest.mark.parametrize("bad", ["", "tag:", "tag:=x", "name:", "a:b", "mi-123:/etc"])
def test_malformed_targets_are_refused(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_targets([bad])


def test_no_target_is_refused() -> None:
    with pytest.raises(TargetError, match="at least one"):
        parse_targets([])


# The OpenAPI document's pattern, which the property below draws from.
TARGET_PATTERN = re.compile(
    models.CommandRequest.model_json_schema()["properties"]["targets"]["items"]["pattern"])


def test_a_name_is_a_target() -> None:
    t = parse_targets(["web-1", "name:cam:2", "name:all", "mi-laptop", "everything"])
    assert t.names == frozenset({"web-1", "cam:2", "all", "mi-laptop", "everything"})
    assert not t.everything and not t.node_ids and not t.tag_sets


def test_all_ids_and_tags_are_not_names() -> None:
    t = parse_targets(["all", NODE, "tag:a=1"])
    assert t.names == frozenset() and t.everything and t.node_ids == {NODE}


@pytest.mark.parametrize("expr", ["web-1", "name:cam:2", "tag:a=1,tag:b=2", "all", NODE])
def test_the_document_allows_every_kind(expr: str) -> None:
    assert TARGET_PATTERN.fullmatch(expr)


@pytest.mark.parametrize("expr", ["", "tag:", "name:", "a:b"])
def test_the_document_refuses_what_the_server_refuses(expr: str) -> None:
    assert not TARGET_PATTERN.fullmatch(expr)


@given(st.from_regex(TARGET_PATTERN, fullmatch=True).filter(lambda s: "\n" not in s))
def test_every_target_the_document_allows_parses(expr: str) -> None:
    """A client following the OpenAPI document is never answered 400 bad_targets."""
    parse_targets([expr])
