"""The AsyncAPI document: committed as generated, valid AsyncAPI 3.0, complete for integrators."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from service.dev.asyncapi import CANONICAL_ENV

PROJECT = Path(__file__).resolve().parents[1]
SCHEMA = Path(__file__).resolve().parent / "asyncapi-3.0.0.schema.json"  # @asyncapi/specs 6.11.1


def _generated() -> str:
    env = {"PATH": os.environ["PATH"], "LOG_LEVEL": "WARNING", **CANONICAL_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "service.dev.asyncapi"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((PROJECT / "docs" / "asyncapi.yaml").read_text())
    return loaded


def test_committed_document_is_what_the_code_generates() -> None:
    committed = (PROJECT / "docs" / "asyncapi.yaml").read_text()
    assert committed == _generated(), "docs/asyncapi.yaml is stale: run `make docs`"


def test_document_validates_as_asyncapi_3() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(_document(), schema)


def test_document_describes_the_channel_parameter_payload_and_dead_letter_headers() -> None:
    document = _document()
    assert document["info"]["contact"]["name"]
    channel = document["channels"]["audit.session.end.{session_id}"]
    assert channel["parameters"]["session_id"]["description"]
    messages = document["components"]["messages"]
    dead_letter = next(m for name, m in messages.items() if name.startswith("audit.dlq."))
    assert set(dead_letter["headers"]["required"]) == {
        "Audit-Dlq-Reason",
        "Audit-Dlq-Detail",
        "Audit-Original-Subject",
    }
    payload = next(
        s for name, s in document["components"]["schemas"].items() if "session.end" in name
    )
    assert payload["type"] == "object"
    assert all(
        field.get("description") and field.get("examples")
        for field in payload["properties"].values()
    )
