"""Plots as inline SVG strings: matplotlib's SVG backend on a bare ``Figure`` (no pyplot, no Agg).

Text stays text (``svg.fonttype: none``) so the page is small and the browser renders it in
its own sans-serif font; each figure hashes its SVG ids with its own salt so several figures
can share one HTML page without clashing ``<clipPath>`` ids.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "legend.frameon": False,
         "svg.fonttype": "none", "font.family": "sans-serif"}
ROLE_COLOURS = [("teacher", "#3b3b3b"), ("distilled", "#1f77b4"), ("student", "#17becf"),
                ("continued", "#8c564b"), ("from scratch", "#ff7f0e"), ("compressed", "#2ca02c"),
                ("export", "#9467bd")]
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f"]


def role_colour(role: str) -> str:
    return next((c for prefix, c in ROLE_COLOURS if role.startswith(prefix)), "#7f7f7f")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def render(make, salt: str) -> str:
    """Call ``make()`` (returns a Figure) under the report style; return its SVG markup."""
    import matplotlib

    with matplotlib.rc_context({**STYLE, "svg.hashsalt": f"llm4all-{salt}"}):
        fig = make()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _log_axis(axis) -> None:
    """Log scale with plain major labels (0.5, 2, 300) and unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis._set_axes_scale("log")
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def pareto(points: list[dict], metrics: list[tuple[str, str, float]]) -> str:
    """Perplexity against each metric (log x), one panel per metric; the frontier as a step line.

    ``points``: dicts with name, role, ppl and the metric keys; ``metrics``: (key, label, scale).
    """
    def make():
        fig = _figure(4.2 * len(metrics), 3.4)
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        ppls = [p["ppl"] for p in points]
        for ax, (key, label, scale) in zip(axes, metrics, strict=True):
            pts = sorted((p for p in points if p.get(key)), key=lambda p: p[key])
            xs = [p[key] / scale for p in pts]
            for p, x in zip(pts, xs, strict=True):
                ax.scatter(x, p["ppl"], s=60, color=role_colour(p["role"]), zorder=3, edgecolor="white")
                ax.annotate(p["name"], (x, p["ppl"]), xytext=(6, 4), textcoords="offset points", fontsize=8)
            front, best = [], math.inf
            for p, x in zip(pts, xs, strict=True):
                if p["ppl"] < best:
                    best = p["ppl"]
                    front.append((x, best))
            if len(front) > 1:
                fx, fy = zip(*front, strict=True)
                ax.step(fx, fy, where="post", color="#999", lw=1, ls="--", zorder=1, label="Pareto frontier")
                ax.legend(loc="upper right", fontsize=8)
            _log_axis(ax.xaxis)
            if max(ppls) / max(min(ppls), 1e-9) > 8:
                _log_axis(ax.yaxis)
            ax.set_xlabel(label + " (log scale)")
            ax.set_ylabel("perplexity (lower is better)")
            ax.margins(x=0.25, y=0.15)
        return fig

    return render(make, "pareto")


def curves(runs: dict[str, list[dict]]) -> str:
    """Training loss (left) and validation loss (right) against tokens seen, one colour per stage."""
    def make():
        fig = _figure(9.0, 3.2)
        left, right = fig.subplots(1, 2)
        most = max((r.get("tokens", 0) for rows in runs.values() for r in rows), default=0)
        scale, unit = (1e6, "millions") if most >= 1e6 else (1e3, "thousands")
        for i, (name, rows) in enumerate(runs.items()):
            colour = PALETTE[i % len(PALETTE)]
            rows = [r for r in rows if isinstance(r.get("loss"), int | float)]
            x = [r.get("tokens", r["step"]) / scale for r in rows]
            left.plot(x, [r["loss"] for r in rows], color=colour, lw=1.2, label=f"{name} loss")
            if any("ce" in r for r in rows):
                left.plot(x, [r.get("ce", np.nan) for r in rows], color=colour, lw=1, ls="--",
                          label=f"{name} hard-label CE")
            val = [(r.get("tokens", r["step"]) / scale, r["val_loss"]) for r in rows if "val_loss" in r]
            if val:
                right.plot(*zip(*val, strict=True), marker="o", color=colour, label=name)
        left.set_title("training loss")
        right.set_title("validation loss")
        for ax in (left, right):
            ax.set_xlabel(f"tokens seen ({unit})")
            ax.set_ylabel("nats / token")
            if ax.has_data():
                ax.legend(fontsize=8)
        return fig

    return render(make, "curves")


def hbars(labels: Sequence[str], values: Sequence[float], xlabel: str, colours: Sequence[str] | None = None,
          annotate: Sequence[str] | None = None, salt: str = "hbars", log: bool = False,
          ref: float | None = None) -> str:
    """Horizontal bars, first label on top; optional per-bar text and a reference line."""
    def make():
        fig = _figure(7.5, 0.9 + 0.28 * len(labels))
        ax = fig.subplots()
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=colours or PALETTE[0], height=0.65)
        ax.set_yticks(y, labels)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if log:
            _log_axis(ax.xaxis)
        if ref is not None:
            ax.axvline(ref, color="#333", lw=1)
        for yi, v, text in zip(y, values, annotate or [f"{v:,.3g}" for v in values], strict=True):
            ax.annotate(text, (v, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.18)
        return fig

    return render(make, salt)


def histograms(columns: dict[str, np.ndarray], removed: np.ndarray, per_row: int = 4) -> str:
    """Small multiples: each signal's distribution over kept and removed documents (share of each)."""
    def make():
        rows = math.ceil(len(columns) / per_row)
        fig = _figure(2.3 * per_row, 1.75 * rows + 0.4)
        axes = fig.subplots(rows, per_row, squeeze=False).ravel()
        for ax, (name, values) in zip(axes, columns.items(), strict=False):
            values = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(values)
            lo, hi = np.percentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0)
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
            for mask, colour, label in ((~removed, "#1f77b4", "kept"), (removed, "#d62728", "removed")):
                v = np.clip(values[mask & finite], bins[0], bins[-1])
                if v.size:
                    ax.hist(v, bins=bins, weights=np.full(v.size, 1 / v.size), histtype="stepfilled",
                            alpha=0.45, color=colour, label=label)
            ax.set_title(name, fontsize=8, fontweight="normal")
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
        for ax in axes[len(columns):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper right", ncols=2)
        return fig

    return render(make, "histograms")


def stacked_memory(components: dict[str, float], measured: float | None) -> str:
    """Planned memory as a stacked bar of its components, beside the measured peak if any."""
    big = max(sum(components.values()), measured or 0) >= 2**30
    unit, unit_name = (2**30, "GiB") if big else (2**20, "MiB")

    def make():
        fig = _figure(7.5, 1.9)
        ax = fig.subplots()
        left = 0.0
        for i, (name, v) in enumerate(components.items()):
            ax.barh(1, v / unit, left=left, color=PALETTE[i % len(PALETTE)], label=name, height=0.6)
            left += v / unit
        if measured is not None:
            ax.barh(0, measured / unit, color="#3b3b3b", height=0.6)
        ticks = [1, 0] if measured is not None else [1]
        ax.set_yticks(ticks, ["planned", "measured"][: len(ticks)])
        ax.set_xlabel(unit_name)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside right upper", fontsize=7)
        return fig

    return render(make, "memory")
