"""Why a configuration won: study-level findings per BN practice, honest about their evidence.

An HPO study is observational data from an adaptive sampler: it chose which settings to try
based on earlier results. Every comparison here is therefore made at matched learning rates (or
through a paired measurement), repeats of one configuration count once, and each finding carries
a 95% interval (bootstrap, seeded: the same trials give the same report). The findings can
suggest; controlled confirmation runs (``source="confirmation"``) can prove.

Entry points: ``analyze_study(trials, spec, options) -> StudyReport``,
``analyze_confirmation(trials, spec, options)`` for a confirmation study (search/confirm.py:
controlled runs over seeds, paired t intervals, read on the test split; see ``_confirm.py``),
``combine_reports(study_report, confirmation_report)`` and ``render_html(report) -> str``.

Strength, read off a finding's 95% interval ``[lo, hi]`` and a practical margin ``m``
(``AnalysisOptions.practical_margin`` = 1 accuracy point for accuracies and per-decade trends,
``lr_margin_decades`` = 0.15 decades for learning-rate windows):

- ``strong``: the interval excludes every difference within the margin (lo > m or hi < -m).
- ``moderate``: the interval excludes zero but reaches into the margin.
- ``weak``: the interval includes zero and reaches beyond the margin: the data lean, but
  cannot rule out no difference.
- ``no clear winner``: the whole interval lies within ±m: whatever the difference, it is too small
  to matter.
- ``insufficient data``: too few distinct configurations (``min_points`` per group,
  ``min_curve_points`` per curve, ``min_trend_points`` per trend) or no interval.

A batch-size scaling slope is judged against the scaling rules 0 (none), 0.5 (square root) and
1 (linear) instead: ``weak`` when the interval contains two or more of them, ``strong`` when it
contains at most one and is at most 0.5 wide, ``moderate`` when it contains at most one but is
wider. Strength never depends on trial counts except through the interval.
"""

import importlib
from typing import TYPE_CHECKING, Any

# The report's models load light (pydantic only): the CLI and the API client parse reports
# without importing numpy or Optuna. The analysis itself loads on first use.
from search.analysis._models import (
    AnalysisOptions,
    ConfirmationInfo,
    Finding,
    Practice,
    Source,
    Strength,
    StudyReport,
    Thresholds,
    TrialCounts,
)

if TYPE_CHECKING:
    from search.analysis._analyze import OBSERVATIONAL, analyze_study
    from search.analysis._confirm import analyze_confirmation, combine_reports
    from search.analysis._html import render_html
    from search.analysis._records import (
        Point,
        StudyData,
        TrialRecord,
        infer_val_size,
        read_study,
    )

_LAZY = {
    "OBSERVATIONAL": "_analyze",
    "analyze_study": "_analyze",
    "analyze_confirmation": "_confirm",
    "combine_reports": "_confirm",
    "render_html": "_html",
    "Point": "_records",
    "StudyData": "_records",
    "TrialRecord": "_records",
    "infer_val_size": "_records",
    "read_study": "_records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"search.analysis.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'search.analysis' has no attribute {name!r}")


__all__ = [
    "OBSERVATIONAL",
    "AnalysisOptions",
    "ConfirmationInfo",
    "Finding",
    "Point",
    "Practice",
    "Source",
    "Strength",
    "StudyData",
    "StudyReport",
    "Thresholds",
    "TrialCounts",
    "TrialRecord",
    "analyze_confirmation",
    "analyze_study",
    "combine_reports",
    "infer_val_size",
    "read_study",
    "render_html",
]
