"""A study report as one self-contained HTML page: no scripts, no external requests, plots as
inline SVG drawn with matplotlib (imported here, lazily, and only through its object API, so no
pyplot state or backend choice leaks into the caller's process)."""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from search.analysis._models import Finding, Source, Strength, StudyReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_COLORS = {
    "before_activation": "#1f77b4",
    "after_activation": "#ff7f0e",
    "none": "#2ca02c",
    "pre_activation": "#9467bd",
}
_FALLBACK_COLORS = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:60rem;margin:0 auto;padding:1rem 1.5rem;background:#fff}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{padding:.3rem .5rem;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}
.badge{display:inline-block;padding:0 .5rem;border-radius:.7rem;font-size:.85rem;color:#fff}
.strong{background:#1b7837}.moderate{background:#5aae61}.weak{background:#b8860b}
.no-clear-winner{background:#4575b4}.insufficient-data{background:#888}
.source{font-size:.85rem;color:#555}.warnings li{margin:.3rem 0}
figure{margin:1rem 0}figure svg{max-width:100%;height:auto}
pre{background:#f4f4f4;padding:.5rem;overflow:auto;font-size:.8rem}
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _title(practice: str) -> str:
    return practice.replace("_", " ").capitalize().replace("Bn", "BN")


def _estimate(f: Finding) -> str:
    """The headline estimate ± its interval, in the finding's unit."""
    value = f.effect.get("estimate")
    if not isinstance(value, int | float):
        return "—"
    unit = str(f.effect.get("unit", ""))
    if unit.startswith("accuracy"):
        text = f"{100 * value:+.1f} points"
        ci = f.ci95 and f"{100 * f.ci95[0]:+.1f} to {100 * f.ci95[1]:+.1f}"
    elif unit.startswith("decades"):
        text = f"{value:+.2f} decades"
        ci = f.ci95 and f"{f.ci95[0]:+.2f} to {f.ci95[1]:+.2f}"
    else:
        text = f"{value:.2f}"
        ci = f.ci95 and f"{f.ci95[0]:.2f} to {f.ci95[1]:.2f}"
    return f"{text} (95% CI {ci})" if ci else text


def _badge(strength: Strength) -> str:
    return f'<span class="badge {strength.value.replace(" ", "-")}">{_e(strength.value)}</span>'


def render_html(report: StudyReport, *, title: str | None = None) -> str:
    """The report as a self-contained HTML page (one section and one plot per finding)."""
    name = _e(report.study_name)
    c, t = report.counts, report.thresholds
    rows = "".join(
        f'<tr><td><a href="#{_e(f.practice.value)}-{i}">{_e(_title(f.practice.value))}</a></td>'
        f"<td>{_badge(f.strength)}</td><td>{_e(_estimate(f))}</td><td>{_e(f.source.value)}</td>"
        "</tr>"
        for i, f in enumerate(report.findings)
    )
    warnings = "".join(f"<li>{_e(w)}</li>" for w in report.warnings)
    sections = "".join(_section(f, i) for i, f in enumerate(report.findings))
    confirmation = _confirmation(report)
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title or f'bnsweep report: {report.study_name}')}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>Which BN practices mattered: {name}</h1>"
        f"<p>The study optimised {_e(report.objective_metric)} ({_e(report.direction)}); the "
        f"findings compare {_e(report.metric)}. {c.used} of {c.total} trials used "
        f"({c.pruned_used} pruned, {c.failed_to_train} failed to train), {c.configurations} "
        f"distinct configurations, {c.seeds} seed(s).</p>"
        f"{confirmation}"
        f'<h2>Caveats</h2><ul class="warnings">{warnings}</ul>'
        "<h2>Summary</h2><table><tr><th>practice</th><th>strength</th>"
        f"<th>effect (95% CI)</th><th>source</th></tr>{rows}</table>"
        f"{sections}"
        "<h2>Thresholds</h2>"
        f"<p>{_e(t.rule)}.</p>"
        f"<details><summary>Options used</summary><pre>"
        f"{_e(json.dumps(report.options.model_dump(mode='json'), indent=2))}</pre></details>"
        "</main></body></html>\n"
    )


def _confirmation(report: StudyReport) -> str:
    info = report.confirmation
    if info is None:
        return ""
    status = f" ({_e(info.status)})" if info.status else ""
    size = f" ({info.test_size} samples)" if info.test_size else ""
    return (
        f"<p><b>Confirmation runs:</b> study {_e(info.study_name)}{status}, {info.finished} of "
        f"{info.planned} planned runs finished over {info.seeds} fresh seed(s), one factor at a "
        f"time around the best configuration, scored on the test split{size}. Their findings "
        "come first in each section, marked <i>source: confirmation</i>; the search's own "
        "(observational) findings follow, marked <i>source: study</i>.</p>"
    )


_SOURCES = {
    Source.STUDY: "study (observational: the search's own trials)",
    Source.CONFIRMATION: "confirmation (controlled runs over seeds, test split)",
}


def _section(f: Finding, i: int) -> str:
    figure = _figure(f, i)
    units = "seeds" if f.source is Source.CONFIRMATION else "independent units"
    return (
        f'<section id="{_e(f.practice.value)}-{i}"><h2>{_e(_title(f.practice.value))}</h2>'
        f'<p>{_badge(f.strength)} <span class="source">source: {_e(_SOURCES[f.source])}'
        f"{'' if f.sample_size is None else f'; {f.sample_size} {units}'}</span></p>"
        f"<p>{_e(f.verdict)}.</p>"
        f"<p><b>Effect</b> ({_e(f.effect.get('compared') or 'no comparison')}): "
        f"{_e(_estimate(f))}</p>"
        f"{figure}"
        "<details><summary>Numbers</summary>"
        f"<pre>{_e(json.dumps(f.effect, indent=2, ensure_ascii=False))}</pre></details>"
        "</section>"
    )


# --- plots ----------------------------------------------------------------------------------------


def _figure(f: Finding, i: int) -> str:
    kind = str(f.plot.get("kind"))
    draw = _DRAWERS.get(kind)
    data = f.plot.get(_DATA.get(kind, ""))
    if draw is None or not (any(data.values()) if isinstance(data, dict) else data):
        return ""
    svg = _svg(lambda ax: draw(ax, f.plot), salt=f"bnsweep-{i}")
    captions = _CONFIRMATION_CAPTIONS if f.source is Source.CONFIRMATION else {}
    text = captions.get(kind) or _CAPTIONS[kind]
    caption = _e(f"{_title(f.practice.value)}: {text}")
    return f"<figure>{svg}<figcaption>{caption}</figcaption></figure>"


def _svg(draw: Callable[[Axes], None], salt: str) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none", "font.size": 9}):
        fig = Figure(figsize=(6.4, 3.4))
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.14, top=0.96)
        draw(fig.add_subplot())
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    svg = text[text.index("<svg") :]  # drop the XML prolog and its DTD address
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _color(name: str, order: list[str]) -> str:
    return _COLORS.get(name) or _FALLBACK_COLORS[order.index(name) % len(_FALLBACK_COLORS)]


def _scatter_placements(
    ax: Axes, points: dict[str, list[list[float]]], ylabel: str = "validation accuracy"
) -> None:
    names = list(points)
    for name, rows in points.items():
        trained = [r for r in rows if r[2] >= 0.5]
        failed = [r for r in rows if r[2] < 0.5]
        color = _color(name, names)
        if trained:
            ax.scatter(
                [r[0] for r in trained], [r[1] for r in trained], s=14, color=color, label=name
            )
        if failed:
            ax.scatter(
                [r[0] for r in failed],
                [r[1] for r in failed],
                s=18,
                color=color,
                marker="x",
                label=f"{name} (failed to train)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("effective learning rate")
    ax.set_ylabel(ylabel)


def _draw_placement(ax: Axes, plot: dict[str, Any]) -> None:
    _scatter_placements(ax, plot["points"], plot.get("ylabel", "validation accuracy"))
    names = list(plot["points"])
    for name, curve in plot.get("curves", {}).items():
        ys = [math.nan if y is None else y for y in curve["accuracy"]]
        ax.plot(curve["lr"], ys, color=_color(name, names), linewidth=1.5)
    _legend(ax)


def _draw_windows(ax: Axes, plot: dict[str, Any]) -> None:
    _scatter_placements(ax, plot["points"], plot.get("ylabel", "validation accuracy"))
    names = list(plot["points"])
    for name, window in plot["windows"].items():
        if window and name in names:
            ax.axvspan(window[0], window[1], color=_color(name, names), alpha=0.12, linewidth=0)
    if plot.get("threshold") is not None:
        ax.axhline(plot["threshold"], color="#444", linestyle="--", linewidth=0.8)
        ax.annotate(
            "failed-to-train threshold",
            (0.01, plot["threshold"]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )
    _legend(ax)


def _draw_batch_lr(ax: Axes, plot: dict[str, Any]) -> None:
    cells = plot["cells"]
    sizes = sorted({int(c[0]) for c in cells})
    norm = {"vmin": min(c[3] for c in cells), "vmax": max(c[3] for c in cells)} if cells else {}
    mesh = None
    for c in cells:
        row = sizes.index(int(c[0]))
        mesh = ax.pcolormesh(
            np.log10([c[1], c[2]]),
            [row - 0.5, row + 0.5],
            np.array([[c[3]]]),
            cmap="viridis",
            **norm,
        )
    if mesh is not None:
        ax.figure.colorbar(mesh, ax=ax, label="mean validation accuracy")
    for size, lr, ci in plot["optima"]:
        if lr is None or int(size) not in sizes:
            continue
        row = sizes.index(int(size))
        err = (
            None
            if ci is None
            else [[math.log10(lr) - math.log10(ci[0])], [math.log10(ci[1]) - math.log10(lr)]]
        )
        ax.errorbar([math.log10(lr)], [row], xerr=err, color="white", marker="o", capsize=3)
    if plot.get("slope") is not None:
        xs = [plot["intercept"] + plot["slope"] * math.log10(s) for s in sizes]
        ax.plot(
            xs,
            range(len(sizes)),
            color="red",
            linewidth=1.2,
            label=f"fit: slope {plot['slope']:.2f}",
        )
        _legend(ax)
    ax.set_yticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_ylabel("batch size")
    ax.set_xlabel("log10 effective learning rate")


def _draw_bn_momentum(ax: Axes, plot: dict[str, Any]) -> None:
    rows = plot["points"]
    for m, running, batch in rows:
        ax.plot([m, m], [batch, running], color="#bbb", linewidth=0.8)
    ax.scatter([r[0] for r in rows], [r[1] for r in rows], s=14, label="running statistics")
    ax.scatter(
        [r[0] for r in rows], [r[2] for r in rows], s=14, marker="s", label="batch statistics"
    )
    ax.set_xscale("log")
    ax.set_xlabel("bn_momentum (weight of the new batch)")
    ax.set_ylabel("test accuracy")
    _legend(ax)


def _draw_eval_pairs(ax: Axes, plot: dict[str, Any]) -> None:
    rows = plot["points"]
    names = sorted({r[3] for r in rows})
    for name in names:
        mine = [r for r in rows if r[3] == name]
        ax.scatter(
            [r[0] for r in mine], [r[1] for r in mine], s=14, color=_color(name, names), label=name
        )
    if rows:
        lo = min(min(r[0], r[1]) for r in rows)
        hi = max(max(r[0], r[1]) for r in rows)
        ax.plot([lo, hi], [lo, hi], color="#444", linestyle="--", linewidth=0.8)
    ax.set_xlabel("test accuracy, batch statistics")
    ax.set_ylabel("test accuracy, running statistics")
    _legend(ax)


def _draw_init_bn(ax: Axes, plot: dict[str, Any]) -> None:
    rows = plot["effects"]
    inits = sorted({r[0] for r in rows})
    for offset, label, color in ((-0.1, "with BN", "#1f77b4"), (0.1, "without BN", "#2ca02c")):
        mine = [r for r in rows if r[1] == label and r[2] is not None]
        xs = [inits.index(r[0]) + offset for r in mine]
        ys = [100 * r[2] for r in mine]
        err = [
            [100 * (r[2] - r[3]) if r[3] is not None else 0 for r in mine],
            [100 * (r[4] - r[2]) if r[4] is not None else 0 for r in mine],
        ]
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, color=color, label=label)
    ax.axhline(0, color="#444", linewidth=0.8)
    ax.set_xticks(range(len(inits)), inits)
    ax.set_ylabel(f"accuracy vs {plot['reference']} (points)")
    _legend(ax)


def _draw_groups(ax: Axes, plot: dict[str, Any]) -> None:
    groups = plot["groups"]
    for x, values in enumerate(groups.values()):
        known = [v for v in values if v is not None]
        ax.scatter([x] * len(known), known, s=12, alpha=0.6)
        if known:
            ax.hlines(sum(known) / len(known), x - 0.2, x + 0.2, color="#222")
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set_ylabel(plot["label"])


_DRAWERS: dict[str, Callable[[Axes, dict[str, Any]], None]] = {
    "placement": _draw_placement,
    "lr_windows": _draw_windows,
    "batch_lr": _draw_batch_lr,
    "bn_momentum": _draw_bn_momentum,
    "eval_pairs": _draw_eval_pairs,
    "init_bn": _draw_init_bn,
    "groups": _draw_groups,
}
_DATA = {  # where each kind keeps its data: no data, no figure
    "placement": "points",
    "lr_windows": "points",
    "batch_lr": "cells",
    "bn_momentum": "points",
    "eval_pairs": "points",
    "init_bn": "effects",
    "groups": "groups",
}
_CAPTIONS = {
    "placement": "accuracy vs effective learning rate per placement (crosses failed to train; "
    "lines are kernel-smoothed)",
    "lr_windows": "accuracy vs effective learning rate; shaded: where each placement trains",
    "batch_lr": "mean accuracy per batch size and learning-rate bin; dots: smoothed best "
    "learning rate with its 95% interval; red: the fitted scaling",
    "bn_momentum": "test accuracy with running and with batch statistics vs bn_momentum "
    "(grey lines join one configuration)",
    "eval_pairs": "test accuracy with running vs batch statistics (dashed: equal)",
    "init_bn": "effect of each initialization vs the reference, with and without BN (95% CI)",
    "groups": "values per group (bars: means)",
}
_CONFIRMATION_CAPTIONS = {
    "placement": "test accuracy of each run over each placement's learning-rate grid (crosses "
    "failed to train; lines: means over seeds)",
    "lr_windows": "test accuracy of each run over the learning-rate grids; shaded: where most "
    "seeds trained",
    "bn_momentum": "test accuracy of the same trained networks with the running statistics of "
    "each probed bn_momentum (dots) and with batch statistics (squares); grey lines join one "
    "network",
    "eval_pairs": "test accuracy with running vs batch statistics, one dot per seed (dashed: "
    "equal)",
    "init_bn": "effect of each initialization vs the reference, with and without BN, paired by "
    "seed (95% t intervals)",
    "groups": "test accuracy per seed and arm (bars: means)",
}
