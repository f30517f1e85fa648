"""A 422 says in words what is wrong and what would be right (issue 13).

The problems are pydantic's own, from the request bodies the API takes, so a
renamed error type in pydantic fails here rather than silently falling back to its
message; and every field the OpenAPI document constrains with a pattern has words
in ``errors.FORMS``, so the next patterned field cannot quote its regex either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tether.server.api import errors, models
from tether.server.app import build_app
from tether.server.config import Settings


def message(model: type[BaseModel], body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    # FastAPI puts "body" first in a body problem's location; so does this.
    problems = [{**p, "loc": ("body", *p["loc"])} for p in caught.value.errors()]
    return errors.validation_message(problems)


def test_a_malformed_target_says_what_a_target_is() -> None:
    text = message(models.CommandRequest, {"targets": ["place:x"], "script": "true"})
    assert text.startswith("targets.0 is not valid: a target is all, a node id (mi- and "
                           "17 hex digits), a node name (name:NAME when it holds a colon), "
                           "or tag:KEY=VALUE")
    assert "pattern" not in text and "place:x" not in text


def test_an_empty_script_says_to_give_one() -> None:
    text = message(models.CommandRequest, {"targets": ["all"], "script": ""})
    assert text == "script is empty: give the commands to run"
    assert "character" not in text


def test_no_targets_says_to_give_one() -> None:
    text = message(models.CommandRequest, {"targets": [], "script": "true"})
    assert text.startswith("targets is empty: give at least one target")


def test_a_name_where_a_node_id_goes_says_what_a_node_id_is() -> None:
    text = message(models.SessionRequest, {"node_id": "vm", "kind": "shell"})
    assert text == ("node_id is not valid: a node id is mi- and 17 hex digits "
                    "(tether nodes list shows them)")


def test_a_field_without_words_says_where_its_form_is_never_the_value() -> None:
    problem = {"type": "string_pattern_mismatch", "loc": ("query", "novel"),
               "msg": "String should match pattern '^x$'", "input": "SECRET"}
    text = errors.validation_message([problem])
    assert text.startswith("novel is not valid: it does not have the form")
    assert "SECRET" not in text and "^x$" not in text


def test_other_problems_keep_pydantic_s_words() -> None:
    text = message(models.CommandRequest, {"targets": ["all"], "script": "true",
                                           "timeout": -1})
    assert text == "timeout: Input should be greater than 0"


def test_every_patterned_field_of_the_document_has_words(tmp_path: Path) -> None:
    doc = build_app(Settings.for_data_dir(tmp_path)).app.openapi()
    patterned: set[str] = set()

    def walk(node: object, name: str | None) -> None:
        if isinstance(node, dict):
            if "pattern" in node and name is not None:
                patterned.add(name)
            for key, value in node.items():
                if key == "properties":
                    for field, schema in value.items():
                        walk(schema, field)
                elif key not in ("title", "description"):
                    walk(value, name)
        elif isinstance(node, list):
            for item in node:
                walk(item, name)

    for operations in doc["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                walk(parameter.get("schema"), parameter["name"])
    walk(doc["components"]["schemas"], None)
    assert "targets" in patterned and "node_id" in patterned
    assert sorted(patterned - set(errors.FORMS)) == []


# Where the server names a code: an error class's or a refusal's first string
# argument (ApiError(404, "x", ...), SessionError("x", ...), who.refuse(403, "x", ...),
# _refuse(websocket, "x", ...)), or a ``closed`` message's "code".
RAISED = re.compile(r'(?:Error|refuse)\((?:websocket, )?(?:\d+, )?"([a-z_]+)"'
                    r'|"code": "([a-z_]+)"|(?:WRONG_CODE|CODE) = "([a-z_]+)"')


# ... or a constant holding it (OperatorError(LAST_ADMIN, ...)), resolved by its assignment.
RAISED_BY_NAME = re.compile(r'Error\(([A-Z][A-Z_]+)[,)]')
CONSTANT = re.compile(r'^([A-Z][A-Z_]+) = "([a-z_]+)"$', re.MULTILINE)


def test_every_code_the_server_raises_is_in_the_one_set() -> None:
    root = Path(errors.__file__).resolve().parents[1]
    texts = [path.read_text() for path in root.rglob("*.py")]
    constants = {name: value for text in texts for name, value in CONSTANT.findall(text)}
    raised = {code for text in texts for match in RAISED.finditer(text)
              for code in match.groups() if code}
    raised |= {constants[name] for text in texts for name in RAISED_BY_NAME.findall(text)
               if name in constants}
    assert {"node_not_found", "session_not_found", "bad_targets", "last_admin"} <= raised
    assert sorted(raised - set(errors.CODES)) == []


def test_codes_are_named_one_way() -> None:
    assert not [c for c in errors.CODES if c.startswith("no_such_")]
    assert "no_such_node" not in errors.CODES


def test_the_document_lists_the_codes(tmp_path: Path) -> None:
    doc = build_app(Settings.for_data_dir(tmp_path)).app.openapi()
    error = doc["components"]["schemas"]["ErrorBody"]["properties"]["error"]
    assert error["enum"] == sorted(errors.CODES)
    assert "node_not_found: no such node" in error["description"]
