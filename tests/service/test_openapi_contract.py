"""Schemathesis against the live server: no 500s, answers match the documented schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings


def test_every_operation_honours_its_openapi_contract(server):
    # from_url needs the live server, so operations are walked here rather than parametrized.
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {server.key}"}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            # A valid-looking spec can still name an unknown model or dataset (registry checks
            # are beyond a JSON schema), so "positive data accepted" cannot hold for POST.
            case.call_and_validate(
                headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance]
            )

        check()
