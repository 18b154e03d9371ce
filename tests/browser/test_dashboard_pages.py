"""The optuna-dashboard served by our process renders in a real browser."""

from __future__ import annotations

import re

import pytest

from tests.browser.playwright_api import Page, expect

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

BN_PARAMS = {"batch_size", "learning_rate", "momentum", "bn_momentum", "bn_placement"}


def test_study_list_shows_the_study(page: Page, finished_study) -> None:
    page.goto("/dashboard")
    card = page.locator(f'a[href="/dashboard/studies/{finished_study.optuna_study_id}"]')
    expect(card).to_contain_text(finished_study.name)


def test_study_page_shows_the_best_bn_params_and_the_history(page: Page, finished_study) -> None:
    page.goto(f"/dashboard/studies/{finished_study.optuna_study_id}")
    params = page.get_by_text(re.compile(r"^Params = \["))  # the best trial's card
    expect(params).to_be_visible()
    shown = dict(re.findall(r"(\w+): ([^,\]]+)", params.inner_text()))
    assert set(shown) == BN_PARAMS == set(finished_study.best_params)
    for name, value in finished_study.best_params.items():
        if isinstance(value, float):
            assert float(shown[name]) == pytest.approx(value), name
        else:
            assert shown[name] == str(value), name
    history = page.locator("#plot-history")  # plotly: one marker per finished trial, one line
    expect(history.locator(".xtitle")).to_have_text("Trial")
    expect(history.locator(".scatterlayer .point")).to_have_count(finished_study.n_finished)
    expect(history.locator(".scatterlayer .js-line")).to_have_count(1)
