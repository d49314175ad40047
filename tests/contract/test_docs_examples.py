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


def test_consent_agreement_example_is_valid_terms():
    from datetime import UTC, datetime

    from catalog.seeds import SeedTerritory, demo_datasets
    from contracts.terms import check_against_dataset

    document = json.loads((EXAMPLES / "agreement-consent.json").read_text(encoding="utf-8"))
    terms = Terms.model_validate(document["terms"])
    assert terms.legal_basis.value == "A6-1-a" and terms.consent_purpose is not None
    territory = SeedTerritory("242100410", "Dijon Métropole", ("21231",), "dijon")
    metadata = dict(demo_datasets(territory))["consommation-eau-menages"]
    # The registry would accept it for the demo dataset (raises TermsError otherwise).
    check_against_dataset(terms, metadata, now=datetime(2026, 12, 1, tzinfo=UTC))
