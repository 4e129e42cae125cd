"""The report's charts: matplotlib figures saved as inline SVG, each with a <title>.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: nothing global
changes (a notebook that imports lmforge keeps its backend) and no display is needed. Text stays
text in the SVG (`svg.fonttype: none`) with a font list that falls back to CJK fonts, so class
names or prompts in Chinese render in the browser without embedding glyphs, and the page stays
small. Each figure gets its own id salt, so the clip paths of several inline SVGs never collide.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

FONTS = ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
         "Microsoft YaHei", "PingFang SC", "Arial Unicode MS"]
COLORS = ["#3366aa", "#dd7733", "#44aa77", "#aa4466", "#7766bb", "#998833", "#33aaaa", "#777777"]
_PROLOG = re.compile(r"^.*?(?=<svg)", re.S)
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_SIZE = re.compile(r'\s(?:width|height)="[^"]*"')
_NAMESPACES = re.compile(r'\sxmlns(?::xlink)?="[^"]*"')


def _available_fonts() -> list[str]:
    """The fallback list, cut to installed fonts plus a generic family, so matplotlib never warns."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in FONTS if f in installed] + ["sans-serif"]


def _rc(title: str) -> dict:
    from cycler import cycler

    return {
        "svg.fonttype": "none",
        "svg.hashsalt": hashlib.sha1(title.encode()).hexdigest()[:12],
        "font.family": _available_fonts(),
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": cycler(color=COLORS),
    }


class Chart:
    """`with Chart(title) as ch:` draw on `ch.fig` (a fresh Figure in the report's style); `ch.svg` after."""

    def __init__(self, title: str, width: float = 6.4, height: float = 3.6) -> None:
        self.title, self.size, self.svg = title, (width, height), ""

    def __enter__(self):
        import matplotlib

        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        self._ctx = matplotlib.rc_context(_rc(self.title))
        self._ctx.__enter__()
        from matplotlib.figure import Figure

        self.fig = Figure(figsize=self.size, layout="constrained")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                buf = io.StringIO()
                self.fig.savefig(buf, format="svg", metadata={"Date": None})
                self.svg = inline_svg(buf.getvalue(), self.title)
        finally:
            self._ctx.__exit__(*exc)


def inline_svg(svg: str, title: str) -> str:
    """A standalone SVG file made fit for inlining: no prolog or metadata, a <title>, scalable size."""
    svg = _METADATA.sub("", _PROLOG.sub("", svg, count=1), count=1)
    head_end = svg.index(">") + 1
    head = _NAMESPACES.sub("", _SIZE.sub("", svg[:head_end]))
    head = head.replace("<svg", f'<svg role="img" aria-label="{html.escape(title)}"', 1)
    return f"{head}\n<title>{html.escape(title, quote=False)}</title>{svg[head_end:]}"


def thin(points: Sequence[tuple[float, float]], limit: int = 2000) -> list[tuple[float, float]]:
    """At most `limit` points, evenly strided, always keeping the last: a 100k-step curve stays light."""
    points = list(points)
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    if kept[-1] != points[-1]:
        kept.append(points[-1])
    return kept


def _xy(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


# --------------------------------------------------------------------------- data


def funnel(stages: Sequence[tuple[str, int]], title: str) -> str:
    """Records left after each stage, as horizontal bars with the share of the input."""
    names = [n for n, _ in stages]
    counts = [c for _, c in stages]
    first = max(counts[0], 1)
    with Chart(title, height=max(2.2, 0.9 + 0.32 * len(stages))) as ch:
        ax = ch.fig.add_subplot()
        y = np.arange(len(stages))[::-1]
        ax.barh(y, counts, color=COLORS[0], height=0.65)
        ax.set_yticks(y, names)
        ax.set_xlabel("records")
        ax.grid(axis="y", visible=False)
        for yi, c in zip(y, counts, strict=True):
            ax.text(c, yi, f" {c:,} ({100 * c / first:.1f}%)", va="center", fontsize=8)
        ax.set_xlim(0, max(counts) * 1.3 or 1)
    return ch.svg


def bars(labels: Sequence[str], values: Sequence[float], title: str, xlabel: str, log: bool = False,
         fmt: str = "{:,.0f}", xmax: float | None = None) -> str:
    """One horizontal bar per label (largest first as given), each annotated with its value."""
    with Chart(title, height=max(2.2, 0.9 + 0.3 * len(labels))) as ch:
        ax = ch.fig.add_subplot()
        y = np.arange(len(labels))[::-1]
        ax.barh(y, values, color=COLORS[1], height=0.65)
        ax.set_yticks(y, labels)
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if log:
            ax.set_xscale("log")
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, " " + fmt.format(v), va="center", fontsize=8)
        if xmax is not None:
            ax.set_xlim(0, xmax)
        else:
            ax.margins(x=0.15)
    return ch.svg


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str, ylabel: str,
                 log: bool = False) -> str:
    """Vertical bars per group, one colour per series (e.g. documents per language before/after)."""
    with Chart(title) as ch:
        ax = ch.fig.add_subplot()
        x = np.arange(len(groups))
        width = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        ax.set_xticks(x, groups)
        ax.set_ylabel(ylabel)
        ax.grid(axis="x", visible=False)
        if log:
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(frameon=False)
    return ch.svg


def length_histogram(lengths: Mapping[str, np.ndarray], title: str) -> str:
    """Characters per document on log-spaced bins, one outline per language."""
    everything = np.concatenate([v for v in lengths.values() if v.size]) if lengths else np.zeros(0)
    low = max(1.0, float(everything.min())) if everything.size else 1.0
    top = max(low * 10, float(everything.max())) if everything.size else 10.0
    edges = np.unique(np.logspace(math.log10(low) - 0.02, math.log10(top) + 0.02, 40).round())
    with Chart(title) as ch:
        ax = ch.fig.add_subplot()
        for name, values in lengths.items():
            ax.hist(np.maximum(values, 1), bins=edges, histtype="step", linewidth=1.6,
                    label=f"{name} ({values.size:,})")
        ax.set_xscale("log")
        ax.set_xlabel("characters per document")
        ax.set_ylabel("documents")
        ax.legend(frameon=False)
    return ch.svg


def score_histogram(kept: np.ndarray, dropped: np.ndarray, cutoff: float | None, title: str, xlabel: str) -> str:
    """Quality scores on shared bins, kept stacked on dropped, with the cutoff as a dashed line."""
    everything = np.concatenate([kept, dropped])
    edges = np.histogram_bin_edges(everything, bins=40) if everything.size else np.linspace(0, 1, 41)
    with Chart(title) as ch:
        ax = ch.fig.add_subplot()
        ax.hist([dropped, kept], bins=edges, stacked=True, color=[COLORS[1], COLORS[0]],
                label=[f"dropped ({dropped.size:,})", f"kept ({kept.size:,})"])
        if cutoff is not None:
            ax.axvline(cutoff, color="#222222", linestyle="--", linewidth=1.2, label=f"cutoff {cutoff:.4g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("documents")
        ax.legend(frameon=False)
    return ch.svg


# --------------------------------------------------------------------------- training


def loss_curves(train: Sequence[tuple[float, float]], val: Mapping[str, Sequence[tuple[float, float]]],
                lr: Sequence[tuple[float, float]], title: str, extra: Mapping[str, Sequence] | None = None) -> str:
    """Training loss (thin), validation losses (markers) and the learning rate on a second axis."""
    with Chart(title, height=3.8) as ch:
        ax = ch.fig.add_subplot()
        if train:
            ax.plot(*_xy(thin(train)), label="train loss", color=COLORS[0], linewidth=1.2)
        for i, (name, points) in enumerate((extra or {}).items()):
            ax.plot(*_xy(thin(points)), label=f"train {name}", color=COLORS[4 + i % 4], linewidth=0.8, alpha=0.8)
        for i, (name, points) in enumerate(val.items()):
            if points:
                ax.plot(*_xy(points), marker="o", markersize=4, label=name, color=COLORS[1 + i % 3], linewidth=1.4)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        handles, names = ax.get_legend_handles_labels()
        if lr:
            ax2 = ax.twinx()
            ax2.plot(*_xy(thin(lr)), color="#999999", linestyle="--", linewidth=1, label="learning rate")
            ax2.set_ylabel("learning rate")
            ax2.grid(False)
            ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            h2, n2 = ax2.get_legend_handles_labels()
            handles, names = handles + h2, names + n2
        ax.legend(handles, names, frameon=False, fontsize=8, loc="best")
    return ch.svg


def throughput(tps: Sequence[tuple[float, float]], mfu: Sequence[tuple[float, float]],
               grad_norm: Sequence[tuple[float, float]], title: str) -> str:
    """Tokens per second (with MFU on a second axis when measured) above the gradient norm."""
    from matplotlib.ticker import PercentFormatter

    with Chart(title, height=4.2) as ch:
        top, bottom = ch.fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        top.plot(*_xy(thin(tps)), color=COLORS[2], marker=".", label="tokens/s")
        top.set_ylabel("tokens / s")
        top.set_ylim(bottom=0)
        if mfu:
            ax2 = top.twinx()
            ax2.plot(*_xy(thin(mfu)), color=COLORS[3], marker=".", label="MFU")
            ax2.set_ylabel("MFU")
            ax2.yaxis.set_major_formatter(PercentFormatter(1.0))
            ax2.grid(False)
        bottom.plot(*_xy(thin(grad_norm)), color=COLORS[4], label="grad norm")
        bottom.set_ylabel("gradient norm")
        bottom.set_xlabel("step")
    return ch.svg


def metric_curves(series: Mapping[str, Sequence[tuple[float, float]]], title: str) -> str:
    """Validation metrics (accuracy, F1, ...) at each evaluation."""
    with Chart(title) as ch:
        ax = ch.fig.add_subplot()
        for name, points in series.items():
            ax.plot(*_xy(points), marker="o", markersize=4, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("validation score")
        ax.legend(frameon=False)
    return ch.svg


def confusion(labels: Sequence[str], matrix: Sequence[Sequence[int]], title: str) -> str:
    """Counts, coloured by the share of each true class (row), so rare classes stay readable."""
    m = np.asarray(matrix, dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    side = min(7.5, max(4.2, 2.4 + 0.42 * n))
    with Chart(title, width=side + 1.2, height=side) as ch:
        ax = ch.fig.add_subplot()
        image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.grid(False)
        if n <= 24:
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{int(m[i, j]):,}", ha="center", va="center", fontsize=7 if n > 10 else 8,
                            color="white" if share[i, j] > 0.6 else "#222222")
        ch.fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    return ch.svg
