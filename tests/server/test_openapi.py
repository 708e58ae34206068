"""``/v1/openapi.json`` is a valid OpenAPI 3.1 document: tools that generate clients or
check requests from it refuse one that is not (a path's ``{param}`` left undeclared)."""

from __future__ import annotations

import re

import httpx
from openapi_spec_validator import validate

from tests.server.conftest import Fabric


def test_the_served_openapi_document_is_valid(fabric: Fabric) -> None:
    document = httpx.get(f"{fabric.url}/v1/openapi.json").json()
    validate(document)  # raises, naming what is wrong


def test_every_templated_path_declares_its_parameters_and_queries_are_declared(
    fabric: Fabric,
) -> None:
    """What the validator checks for paths, said plainly; and the query parameters of a
    few routes that take them (the validator cannot know those were left out)."""
    paths = httpx.get(f"{fabric.url}/v1/openapi.json").json()["paths"]
    for path, operations in paths.items():
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (method, path)

    def queries(path: str) -> set[str]:
        return {p["name"] for p in paths[path]["get"].get("parameters", []) if p["in"] == "query"}

    assert queries("/v1/tasks") == {"state", "after", "limit"}
    assert queries("/v1/events") == {"after", "limit"}
    assert queries("/v1/inbox") == {"after"}
    assert queries("/v1/witness/proof") == {"index", "hash", "size"}
    assert queries("/v1/witness/consistency") == {"old", "new"}
    assert {"start", "end", "limit", "since", "until", "cost"} <= queries("/v1/witness/entries")
    assert queries("/v1/ws") == {"token", "inbox"}
