"""The examples the documentation tells people to send are valid."""

from __future__ import annotations

import json
from pathlib import Path

from contracts.terms import Terms

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def test_agreement_request_example_is_valid_terms():
    document = json.loads((EXAMPLES / "agreement-request.json").read_text(encoding="utf-8"))
    terms = Terms.model_validate(document["terms"])
    assert terms.provider == "242100410"
