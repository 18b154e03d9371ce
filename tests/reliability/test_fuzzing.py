"""Schemathesis over the live API's /openapi.json: every operation, positive and negative data,
a valid key; no 5xx, and every answer conforms to the documented schema."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.helpers import PatientWorkerPool
from tests.support import make_study, tiny_spec

pytestmark = pytest.mark.postgres

EXAMPLES_PER_MODE = 40  # per operation and generation mode
MIN_CASES = 500


@pytest.mark.scenario("7. API fuzzing (schemathesis)")
def test_every_operation_survives_fuzzing_without_a_server_error(pg, api, api_key, figures):
    # A finished study, so trials/best/importance also answer 200 for some generated ids.
    spec = tiny_spec("fuzz-seed", budget={"n_trials": 2})
    make_study(pg, spec)
    pool = PatientWorkerPool()
    try:
        pool.start(pg, "--study", spec.name, "--idle-exit", "1")
        pool.wait(timeout=90)
    finally:
        pool.stop()

    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {api_key}"}
    statuses: Counter[int] = Counter()
    per_operation: Counter[str] = Counter()
    failures: list[str] = []

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=30)
            statuses[response.status_code] += 1
            per_operation[operation.label] += 1
            # A schema-valid spec can still name an unknown model (a registry check), so
            # "positive data is accepted" cannot hold for POST /studies.
            case.validate_response(
                response,
                headers=headers,
                excluded_checks=[schemathesis.checks.positive_data_acceptance],
            )

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz(operation, mode)
            except Unsatisfiable:  # no parameters: nothing to make invalid (e.g. GET /healthz)
                assert mode is GenerationMode.NEGATIVE
            except Exception as exc:  # collect every operation's failure, then fail once
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")

    cases = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    figures.update(
        fuzz_cases=cases,
        operations=len(per_operation),
        responses_5xx=server_errors,
        contract_failures=len(failures),
        statuses=dict(sorted(statuses.items())),
    )
    log = api.log_text()
    tracebacks = log[log.find("Traceback") :][:4000] if "Traceback" in log else ""
    assert failures == [], "\n\n".join([*failures, "server log:", tracebacks])
    assert server_errors == 0
    assert cases >= MIN_CASES, f"only {cases} cases ran: {dict(per_operation)}"
