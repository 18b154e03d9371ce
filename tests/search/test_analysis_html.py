"""The HTML report: one self-contained page, readable without scripts, hostile names escaped."""

from __future__ import annotations

import html
import re
import sys

import matplotlib
import numpy as np
import pytest

from search.analysis import (
    Finding,
    Practice,
    Source,
    Strength,
    StudyReport,
    analyze_study,
    render_html,
)
from tests.search.test_analysis import BEFORE, NONE, bump, make_spec, make_trial

HOSTILE = '"><script>alert(1)</script><img src="https://evil.example/x.png">'
EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//"""
)


@pytest.fixture(scope="module")
def report() -> StudyReport:
    rng = np.random.default_rng(0)
    trials = []
    for i, x in enumerate(rng.uniform(-3.0, 1.0, 48)):
        placement = (BEFORE, NONE)[i % 2]
        acc = bump(x) if placement == BEFORE or x < -0.5 else 0.1
        momentum = 10 ** rng.uniform(-3, -0.5)
        running = acc - 0.01 * (-0.5 - np.log10(momentum)) * (placement == BEFORE)
        trials.append(
            make_trial(
                10**x,
                running,
                test=(running, acc),
                bn_placement=placement,
                bn_momentum=momentum,
                batch_size=(64, 256)[i // 2 % 2],
            )
        )
    spec = make_spec("bn_placement", "bn_momentum", "batch_size", name=HOSTILE)
    return analyze_study(trials, spec)


def test_html_report_is_self_contained_and_escapes_a_hostile_study_name(
    report: StudyReport,
) -> None:
    page = render_html(report)
    assert page.count("<svg") == len(report.findings) >= 5
    assert "<script" not in page.lower()
    assert not EXTERNAL.search(page)
    assert html.escape(HOSTILE) in page
    for i, f in enumerate(report.findings):
        assert f'id="{f.practice.value}-{i}"' in page
        assert html.escape(f.verdict) in page


def test_rendering_leaves_matplotlib_settings_and_pyplot_alone(report: StudyReport) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = matplotlib.rcParams.copy()  # copy(): reading "backend" itself would load pyplot
    render_html(report)
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot
    assert matplotlib.rcParams.copy() == before


def test_a_confirmation_finding_renders_with_its_source_and_interval(report: StudyReport) -> None:
    confirmed = Finding(
        practice=Practice.PLACEMENT,
        verdict="before_activation beat after_activation over 3 seeds",
        strength=Strength.STRONG,
        source=Source.CONFIRMATION,
        effect={"estimate": 0.02, "unit": "accuracy (fraction)", "compared": "before - after"},
        ci95=(0.01, 0.03),
        sample_size=3,
    )
    page = render_html(report.model_copy(update={"findings": [confirmed]}))
    assert "source: confirmation (controlled runs over seeds, test split); 3 seeds" in page
    assert "+2.0 points (95% CI +1.0 to +3.0)" in page
    assert "<svg" not in page  # no plot data, no figure
