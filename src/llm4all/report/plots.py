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
                ("adapted", "#8c564b"), ("from scratch", "#ff7f0e"), ("compressed", "#2ca02c"),
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


def tick_label(v: float, _pos: object = None) -> str:
    """Plain tick text: 0.5, 20, 2,000; 3e5 from 10⁵ up and 5e-4 below 10⁻³."""
    if v <= 0 or not math.isfinite(v):
        return f"{v:g}"
    if v >= 1e5 or v < 1e-3:
        mantissa, exponent = f"{v:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{v:,.0f}" if v >= 1000 else f"{v:g}"


def _log_axis(axis, lo: float | None = None, hi: float | None = None) -> None:
    """Log scale labelled at every 1..9 step within a decade's span, at 1-2-5 steps over ≤ 2.5
    decades, else at powers of ten; no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis._set_axes_scale("log")
    decades = math.log10(hi / lo) if lo and hi and lo > 0 else math.inf
    subs = tuple(range(1, 10)) if decades <= 1 else (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(tick_label))
    axis.set_minor_formatter(NullFormatter())


def log_limits(values: Sequence[float], pad: float = 0.12) -> tuple[float, float]:
    """(lo, hi) around positive ``values`` with ``pad`` of the log range (at least ×1.5) each side."""
    lo, hi = math.log10(min(values)), math.log10(max(values))
    margin = max(pad * (hi - lo), math.log10(1.5))
    return 10 ** (lo - margin), 10 ** (hi + margin)


MARKERS = "os^DvP*Xph"  # one shape per model, so models of one role (one colour) stay apart
GLYPHS = dict(zip(MARKERS, "●■▲◆▼✚★✖⬟⬢", strict=True))  # the same shapes as text, for tables
HOLLOW = dict(zip(MARKERS, "○□△◇▽✚☆✖⬠⬡", strict=True))  # ... for a training-loop perplexity


def pareto(points: list[dict], metrics: list[tuple[str, str, float]]) -> str:
    """Perplexity against each metric (log x), one panel per metric, up to three per row.

    ``points``: dicts with name, role, ppl, ppl_source and the metric keys; ``metrics``: (key,
    label, scale). Each model keeps one colour (its role) and one marker shape in every panel,
    named in one legend above the panels (names written beside clustered points overlap); a
    point whose perplexity comes from a training loop's validation, not an ``eval perplexity``
    stage, is hollow. The dashed step line is the Pareto frontier.
    """
    from matplotlib.lines import Line2D

    style = {}
    for i, p in enumerate(points):
        colour, filled = role_colour(p["role"]), str(p.get("ppl_source") or "").startswith("eval")
        style[p["name"]] = {"marker": p.get("marker") or MARKERS[i % len(MARKERS)], "s": 90,
                            "linewidth": 1.6, "zorder": 3, "color": colour if filled else "white",
                            "edgecolor": "white" if filled else colour}

    def make():
        cols = min(3, len(metrics))
        rows = math.ceil(len(metrics) / cols)
        fig = _figure(4.3 * cols, 3.5 * rows + 0.5)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        ppls = [p["ppl"] for p in points]
        ylog = max(ppls) / max(min(ppls), 1e-9) > 4
        frontier = False
        for ax, (key, label, scale) in zip(axes, metrics, strict=False):
            pts = sorted((p for p in points if p.get(key)), key=lambda p: p[key])
            xs = [p[key] / scale for p in pts]
            for p, x in zip(pts, xs, strict=True):
                ax.scatter(x, p["ppl"], **style[p["name"]])
            front, best = [], math.inf
            for p, x in zip(pts, xs, strict=True):
                if p["ppl"] < best:
                    best = p["ppl"]
                    front.append((x, best))
            if len(front) > 1:
                fx, fy = zip(*front, strict=True)
                ax.step(fx, fy, where="post", color="#999", lw=1, ls="--", zorder=1)
                frontier = True
            xlo, xhi = log_limits(xs, 0.12)
            ax.set_xlim(xlo, xhi)
            _log_axis(ax.xaxis, xlo, xhi)
            if ylog:
                ylo, yhi = log_limits(ppls, 0.1)
                ax.set_ylim(ylo, yhi)
                _log_axis(ax.yaxis, ylo, yhi)
            ax.set_xlabel(f"{label}, log scale")
            ax.set_ylabel("perplexity (lower is better)")
        for ax in axes[len(metrics):]:
            ax.set_visible(False)
        handles = [Line2D([], [], ls="none", markersize=8, markeredgewidth=1.6, marker=st["marker"],
                          markerfacecolor=st["color"],
                          markeredgecolor=st["color"] if st["edgecolor"] == "white" else st["edgecolor"])
                   for st in style.values()]
        labels = [f"{p['name']} ({p['role'].split(' (')[0]})" for p in points]
        if frontier:
            handles.append(Line2D([], [], color="#999", lw=1, ls="--"))
            labels.append("Pareto frontier")
        fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 4), fontsize=8)
        return fig

    return render(make, "pareto")


def curves(runs: dict[str, list[dict]]) -> str:
    """Cross-entropy on training batches; the distillation objective; validation loss.

    Panel 1 puts every run on the same footing: the hard-label cross-entropy (a ``train``
    run's loss, a ``distill`` run's ``ce``), nats per token against tokens seen. Panel 2 (only
    with a distillation run) shows its own objective and KL term, which are not cross-entropies.
    Panel 3: validation loss at each evaluation, as lines when a run was evaluated at least
    twice, else as bars of the final value with its perplexity.
    """
    most = max((r.get("tokens", 0) for rows in runs.values() for r in rows), default=0)
    scale, unit = (1e6, "millions") if most >= 1e6 else (1e3, "thousands")
    clean = {name: [r for r in rows if isinstance(r.get("loss"), int | float)] for name, rows in runs.items()}
    kd = any("kd" in r for rows in clean.values() for r in rows)
    vals = {name: [(r.get("tokens", r["step"]) / scale, r["val_loss"]) for r in rows if "val_loss" in r]
            for name, rows in clean.items()}
    as_lines = max((len(v) for v in vals.values()), default=0) >= 2

    def make():
        panels = 2 + kd
        fig = _figure(3.9 * panels, 3.3)
        axes = list(fig.subplots(1, panels))
        ce, val = axes[0], axes[-1]
        for i, (name, rows) in enumerate(clean.items()):
            colour = PALETTE[i % len(PALETTE)]
            x = [r.get("tokens", r["step"]) / scale for r in rows]
            distill = any("ce" in r for r in rows)
            ce.plot(x, [r.get("ce", np.nan) if distill else r["loss"] for r in rows], color=colour, lw=1.2,
                    label=f"{name} (hard-label CE)" if distill else name)
            if kd and distill:
                axes[1].plot(x, [r["loss"] for r in rows], color=colour, lw=1.2, label=f"{name}: objective")
                axes[1].plot(x, [r.get("kd", np.nan) for r in rows], color=colour, lw=1, ls="--",
                             label=f"{name}: KL term")
            if as_lines and vals[name]:
                val.plot(*zip(*vals[name], strict=True), marker="o", color=colour, label=name)
        ce.set_title("cross-entropy on training batches")
        ce.set_ylabel("nats / token")
        if kd:
            axes[1].set_title("distillation objective (not a CE)")
            axes[1].set_ylabel("loss")
        val.set_title("validation loss")
        if not as_lines:
            named = [(n, v[-1][1]) for n, v in vals.items() if v]
            y = np.arange(len(named))[::-1]
            colours = [PALETTE[list(clean).index(n) % len(PALETTE)] for n, _ in named]
            val.barh(y, [v for _, v in named], color=colours, height=0.45)
            val.set_yticks(y, [n for n, _ in named])
            for yi, (_, v) in zip(y, named, strict=True):
                val.annotate(f"{v:.3f} (ppl {math.exp(v):,.0f})", (v, yi), xytext=(4, 0),
                             textcoords="offset points", va="center", fontsize=8)
            val.margins(x=0.45)
            val.set_xlabel("final validation loss (nats / token)")
            val.grid(axis="y", visible=False)
        for ax in axes:
            if ax is not val or as_lines:
                ax.set_xlabel(f"tokens seen ({unit})")
            if ax.has_data() and (ax is not val or as_lines):
                ax.legend(fontsize=7)
        return fig

    return render(make, "curves")


def hbars(labels: Sequence[str], values: Sequence[float], xlabel: str, colours: Sequence[str] | None = None,
          annotate: Sequence[str] | None = None, salt: str = "hbars", log: bool = False,
          ref: float | None = None, legend: dict[str, str] | None = None) -> str:
    """Horizontal bars, first label on top; optional per-bar text, a reference line, a colour legend."""
    def make():
        fig = _figure(7.5, 0.9 + 0.28 * len(labels) + (0.3 if legend else 0))
        ax = fig.subplots()
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=colours or PALETTE[0], height=0.65)
        ax.set_yticks(y, labels)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if log:
            positive = [v for v in values if v > 0]
            _log_axis(ax.xaxis, min(positive, default=1), max(positive, default=1))
        if ref is not None:
            ax.axvline(ref, color="#333", lw=1)
        for yi, v, text in zip(y, values, annotate or [f"{v:,.3g}" for v in values], strict=True):
            ax.annotate(text, (v, yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
        ax.margins(x=0.18)
        if legend:
            from matplotlib.patches import Patch

            fig.legend([Patch(color=c) for c in legend.values()], list(legend), loc="outside upper center",
                       ncols=min(len(legend), 4), fontsize=8)
        return fig

    return render(make, salt)


def heavy_tailed(values: np.ndarray) -> bool:
    """Positive values whose 99th percentile is over 20× their median: drawn on a log x axis."""
    v = values[np.isfinite(values)]
    return bool(v.size and v.min() > 0 and np.percentile(v, 99) > 20 * np.median(v))


def histograms(columns: dict[str, np.ndarray], removed: np.ndarray, per_row: int = 4,
               titles: dict[str, str] | None = None) -> str:
    """Small multiples: each signal's distribution over kept and removed documents (share of each).

    Bins span the 1st–99th percentile; values beyond it are counted in the end bins. A
    heavy-tailed positive signal (``heavy_tailed``) gets log-spaced bins on a log axis.
    """
    def make():
        rows = math.ceil(len(columns) / per_row)
        fig = _figure(2.6 * per_row, 1.85 * rows + 0.4)
        axes = fig.subplots(rows, per_row, squeeze=False).ravel()
        for ax, (name, values) in zip(axes, columns.items(), strict=False):
            values = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(values)
            lo, hi = np.percentile(values[finite], [1, 99]) if finite.any() else (0.0, 1.0)
            log = heavy_tailed(values) and hi > lo
            bins = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi if hi > lo else lo + 1, 31)
            for mask, colour, label in ((~removed, "#1f77b4", "kept"), (removed, "#d62728", "removed")):
                v = np.clip(values[mask & finite], bins[0], bins[-1])
                if v.size:
                    ax.hist(v, bins=bins, weights=np.full(v.size, 1 / v.size), histtype="stepfilled",
                            alpha=0.45, color=colour, label=label)
            if log:
                _log_axis(ax.xaxis, lo, hi)
            ax.set_title((titles or {}).get(name, name), fontsize=8, fontweight="normal")
            ax.tick_params(labelsize=7)
            ax.set_yticks([])
        for ax in axes[len(columns):]:
            ax.set_visible(False)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper right", ncols=2)
        return fig

    return render(make, "histograms")


def stacked_memory(components: dict[str, float], measured: float | None) -> str:
    """Planned memory as a stacked bar of its components (total written at its end), beside the
    measured peak if any; the legend names the components in order, below the bars."""
    big = max(sum(components.values()), measured or 0) >= 2**30
    unit, unit_name = (2**30, "GiB") if big else (2**20, "MiB")

    def make():
        fig = _figure(7.5, 2.3 if measured is None else 2.7)
        ax = fig.subplots()
        left = 0.0
        for i, (name, v) in enumerate(components.items()):
            ax.barh(1, v / unit, left=left, color=PALETTE[i % len(PALETTE)], height=0.6,
                    label=f"{name.replace('_', ' ')} {v / unit:,.2f}")
            left += v / unit
        ax.annotate(f"{left:,.2f} {unit_name}", (left, 1), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8, fontweight="bold")
        if measured is not None:
            ax.barh(0, measured / unit, color="#3b3b3b", height=0.6)
            ax.annotate(f"{measured / unit:,.2f} {unit_name}", (measured / unit, 0), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=8, fontweight="bold")
        ticks = [1, 0] if measured is not None else [1]
        ax.set_yticks(ticks, ["planned", "measured peak"][: len(ticks)])
        ax.set_xlabel(unit_name)
        ax.margins(x=0.12)
        ax.grid(axis="y", visible=False)
        fig.legend(loc="outside lower center", fontsize=7, ncols=min(len(components), 4))
        return fig

    return render(make, "memory")
