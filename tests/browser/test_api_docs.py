"""/docs (Swagger UI) and /redoc render from assets served by our process: nothing else is asked.

The ``page`` fixture aborts and records every request to another host; the offline tests here
also assert that list empty once the page is idle, and that the page forbids other origins (CSP:
ReDoc's sidebar would otherwise fetch the Redocly logo from its CDN).
"""

from __future__ import annotations

import httpx
import pytest

from tests.browser.playwright_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]


@pytest.fixture(scope="module")
def operations(live_server) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in /openapi.json."""
    paths = httpx.get(f"{live_server.url}/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def test_swagger_ui_lists_every_operation_offline(page: Page, operations, offsite_requests) -> None:
    response = page.goto("/docs")
    assert response is not None
    assert response.headers.get("content-security-policy", "").startswith("default-src 'self';")
    blocks = page.locator("#swagger-ui .opblock")
    expect(blocks).to_have_count(len(operations))
    shown = blocks.evaluate_all(
        """blocks => blocks.map(b => [
            b.querySelector('.opblock-summary-method').textContent,
            b.querySelector('[data-path]').dataset.path,  // deprecated ones: another class
        ])"""
    )
    assert {tuple(op) for op in shown} == operations
    assert ("POST", "/api/v1/studies") in operations
    page.wait_for_load_state("networkidle")
    assert offsite_requests == []


def test_swagger_ui_documents_the_study_spec_body(page: Page) -> None:
    page.goto("/docs")
    operation = page.locator("#operations-studies-submit_api_v1_studies_post")
    operation.locator(".opblock-summary").click()
    errors = page.locator(".errors-wrapper")
    example = operation.locator(".body-param__example")
    # The example body shows search_space's fields once Swagger UI resolved it; else an error box.
    expect(errors.or_(example.filter(has_text='"bn_placement"')).first).to_be_visible()
    assert errors.count() == 0


def test_redoc_runs_offline(page: Page, offsite_requests) -> None:
    with page.expect_response("**/openapi.json") as spec:
        response = page.goto("/redoc")
    assert spec.value.ok
    assert response is not None
    assert response.headers.get("content-security-policy", "").startswith("default-src 'self';")
    expect(page.locator("redoc")).not_to_be_empty()  # ReDoc rendered into its element
    assert page.evaluate("typeof Redoc") == "object"  # the bundle came from our host and ran
    page.wait_for_load_state("networkidle")
    assert offsite_requests == []


def test_redoc_lists_every_operation(page: Page, operations) -> None:
    page.goto("/redoc")
    verbs = page.locator("redoc span.http-verb")
    expect(verbs.or_(page.get_by_text("Something went wrong")).first).to_be_visible()
    shown = verbs.evaluate_all(
        "verbs => verbs.map(v => [v.textContent.toUpperCase(), v.nextElementSibling.textContent])"
    )
    assert {tuple(op) for op in shown} == operations
