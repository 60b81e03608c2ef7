"""Turning :class:`~bench.scenarios.Results` into a table, a JSON file and PNG plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.scenarios import Metric, Results, Value

GROUP_TITLES = {
    "tcp": "TCP throughput (iperf3)",
    "cpu": "CPU cost per GB moved (during the TCP runs)",
    "udp": "UDP packet rate (iperf3; offered rate -> delivered)",
    "ping": "RTT (ping client -> target)",
    "sessions": "CONNECT-IP sessions (load generator; relay memory from /proc)",
}
COLORS = ("#8c8c8c", "#1f77b4")


def fmt(value: Value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_ratio(value: Value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"


# -- table -------------------------------------------------------------------------------


def table(results: Results, *, pairs: bool) -> str:
    """The human-readable table: medians of A and B, the ratio B/A (and each pair's)."""
    a, b = results.labels
    rows: list[list[str]] = []
    header = ["scenario", "figure", "unit", a, b, "ratio", "better"]
    if pairs:
        header += ["pair ratios (B/A per round)"]
    group = None
    sections: list[tuple[str, list[list[str]]]] = []
    for key, metric in results.ordered():
        if not metric.table:
            continue
        if metric.group != group:
            group = metric.group
            rows = []
            sections.append((GROUP_TITLES.get(group, group), rows))
        row = [
            metric.scenario,
            metric.name,
            metric.unit,
            fmt(results.median(key, a)),
            fmt(results.median(key, b)),
            fmt_ratio(results.ratio(key)),
            metric.better,
        ]
        if pairs:
            row.append(" ".join(fmt_ratio(r) for r in results.pair_ratios(key)))
        rows.append(row)
    every = [header] + [row for _, rows in sections for row in rows]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]
    right = {3, 4, 5}

    def line(row: Sequence[str]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(cells).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    for title, rows in sections:
        out.append(f"[{title}]")
        out += [line(row) for row in rows]
    return "\n".join(out)


# -- JSON ---------------------------------------------------------------------------------


def metric_json(results: Results, key: str, metric: Metric) -> dict[str, Any]:
    a, b = results.labels
    return {
        "key": key,
        "group": metric.group,
        "scenario": metric.scenario,
        "metric": metric.name,
        "unit": metric.unit,
        "better": metric.better,
        "params": dict(metric.params),
        "in_table": metric.table,
        "ratio_floor": metric.ratio_floor,
        "runs": {a: results.runs(key, a), b: results.runs(key, b)},
        "median": {a: results.median(key, a), b: results.median(key, b)},
        "ratio": results.ratio(key),
        "pair_ratios": results.pair_ratios(key),
        "pair_ratio_median": results.pair_ratio_median(key),
    }


def document(results: Results, header: dict[str, Any]) -> dict[str, Any]:
    doc = dict(header)
    doc["labels"] = {"A": results.labels[0], "B": results.labels[1]}
    doc["notes"] = results.notes
    doc["results"] = [metric_json(results, k, m) for k, m in results.ordered()]
    doc["errors"] = results.errors
    return doc


def results_from_document(doc: dict[str, Any]) -> Results:
    """Rebuild :class:`Results` from a JSON file this module wrote."""
    labels = (str(doc["labels"]["A"]), str(doc["labels"]["B"]))
    rounds = max((len(r) for row in doc["results"] for r in row["runs"].values()), default=1)
    results = Results(labels, rounds)
    for label, notes in doc.get("notes", {}).items():
        results.notes[label] = list(notes)
    results.errors = list(doc.get("errors", []))
    for row in doc["results"]:
        metric = Metric(
            key=row["key"],
            group=row["group"],
            scenario=row["scenario"],
            name=row["metric"],
            unit=row["unit"],
            better=row["better"],
            params=tuple(row.get("params", {}).items()),
            table=bool(row.get("in_table", True)),
            ratio_floor=float(row.get("ratio_floor", 1.0 if row["metric"] == "loss" else 0.0)),
        )
        for label in labels:
            for index, value in enumerate(row["runs"].get(label, [])):
                results.record(label, index, metric, value)
    return results


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


# -- plots --------------------------------------------------------------------------------


def _spread(results: Results, key: str, label: str) -> tuple[float, float, float] | None:
    """(median, median - min, max - median) of a metric's runs, for error bars."""
    runs = [v for v in results.runs(key, label) if v is not None]
    median = results.median(key, label)
    if median is None or not runs:
        return None
    return median, median - min(runs), max(runs) - median


def _bars(ax: Any, results: Results, keys: list[str], labels: list[str], *, log: bool) -> None:
    """Grouped bars, one group per metric key, one bar per configuration, min-max whiskers."""
    width = 0.8 / max(1, len(labels))
    tallest = 0.0
    for i, label in enumerate(labels):
        xs, heights, low, high = [], [], [], []
        for j, key in enumerate(keys):
            spread = _spread(results, key, label)
            if spread is None:
                continue
            xs.append(j + (i - (len(labels) - 1) / 2) * width)
            heights.append(spread[0])
            low.append(spread[1])
            high.append(spread[2])
            tallest = max(tallest, spread[0] + spread[2])
        if xs:
            color = COLORS[results.labels.index(label)] if label in results.labels else None
            ax.bar(xs, heights, width, label=label, color=color, yerr=[low, high], capsize=3)
    b = results.labels[1]
    for j, key in enumerate(keys):
        ratio = results.ratio(key)
        spread = _spread(results, key, b)
        if ratio is not None and spread is not None and len(labels) == 2:
            ax.annotate(
                f"x{fmt_ratio(ratio)}",
                (j + width / 2, spread[0] + spread[2]),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
    if log and tallest > 0:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def _tick_labels(ax: Any, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, ha="right", fontsize=8)


def _plot_tcp(plt: Any, results: Results, path: Path) -> bool:
    keys = [k for k, m in results.metrics.items() if m.group == "tcp"]
    if not keys:
        return False
    return _bar_plot(
        plt,
        results,
        keys,
        [results.metrics[k].scenario for k in keys],
        size=(8, 4.5),
        ylabel="Mbit/s (log scale)",
        title="TCP throughput, median of rounds (whiskers: min-max); label: B/A",
        path=path,
    )


def _bar_plot(
    plt: Any,
    results: Results,
    keys: list[str],
    ticks: list[str],
    *,
    size: tuple[float, float],
    ylabel: str,
    title: str,
    path: Path,
) -> bool:
    """One figure of grouped bars (median, min-max whiskers) on a log axis."""
    fig, ax = plt.subplots(figsize=size)
    _bars(ax, results, keys, list(results.labels), log=True)
    _tick_labels(ax, ticks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_cpu(plt: Any, results: Results, path: Path) -> bool:
    scenarios = [m.scenario for m in results.metrics.values() if m.group == "tcp"]
    if not scenarios:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    series: list[tuple[str, str, str]] = []  # (label, who, legend)
    for who in ("machine", "relay", "client"):
        for label in results.labels:
            keys = [k for k, m in results.metrics.items() if m.key.endswith(f".cpu.{who}")]
            if any(results.median(k, label) is not None for k in keys):
                series.append((label, who, f"{label}: {who}"))
    width = 0.8 / max(1, len(series))
    hatches = {"machine": "", "relay": "//", "client": ".."}
    for i, (label, who, legend) in enumerate(series):
        xs, heights = [], []
        for j, metric in enumerate(m for m in results.metrics.values() if m.group == "tcp"):
            key = metric.key.replace(".throughput", f".cpu.{who}")
            value = results.median(key, label)
            if value is not None:
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                heights.append(value)
        ax.bar(
            xs,
            heights,
            width,
            label=legend,
            color=COLORS[results.labels.index(label)],
            hatch=hatches[who],
            edgecolor="black",
            linewidth=0.4,
        )
    _tick_labels(ax, scenarios)
    ax.set_yscale("log")
    ax.set_ylabel("CPU seconds per GB (log scale)")
    ax.set_title("CPU per GB: whole machine, relay process, client process (median)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_udp(plt: Any, results: Results, path: Path) -> bool:
    metrics = [m for m in results.metrics.values() if m.group == "udp" and m.name == "delivered"]
    if not metrics:
        return False
    from matplotlib.ticker import EngFormatter, NullFormatter

    sizes = sorted({int(str(m.param("payload"))) for m in metrics})
    fig, axes = plt.subplots(
        2, len(sizes), figsize=(max(7.0, 4.4 * len(sizes)), 7.5), squeeze=False
    )
    for col, size in enumerate(sizes):
        top, bottom = axes[0][col], axes[1][col]
        mine = [m for m in metrics if m.param("payload") == size]
        for label in results.labels:
            color = COLORS[results.labels.index(label)]
            sweep = [m for m in mine if m.param("offered_pps") != "max"]
            xs = [float(str(m.param("offered_pps"))) for m in sweep]
            delivered = [results.median(m.key, label) for m in sweep]
            loss = [results.median(m.key.replace(".delivered", ".loss"), label) for m in sweep]
            points = [
                (x, d, lo) for x, d, lo in zip(xs, delivered, loss, strict=True) if d is not None
            ]
            if points:
                top.plot(
                    [p[0] for p in points], [p[1] for p in points], "o-", color=color, label=label
                )
                bottom.plot(
                    [p[0] for p in points], [p[2] for p in points], "o-", color=color, label=label
                )
            for m in mine:
                if m.param("offered_pps") != "max":
                    continue
                sent = results.median(m.key.replace(".delivered", ".sent"), label)
                got = results.median(m.key, label)
                lost = results.median(m.key.replace(".delivered", ".loss"), label)
                if sent is None or got is None:
                    continue
                top.plot([sent], [got], "*", markersize=13, color=color, label=f"{label} at max")
                top.annotate(
                    f"max {fmt(got)}",
                    (sent, got),
                    textcoords="offset points",
                    xytext=(-8, 6),
                    ha="right",
                    fontsize=7,
                    color=color,
                )
                bottom.plot([sent], [lost], "*", markersize=13, color=color)
        lims = [float(v) for line in top.get_lines() for v in line.get_xdata()]
        if lims:
            lo, hi = min(lims) / 2, max(lims) * 2
            top.plot(
                [lo, hi], [lo, hi], ":", color="black", linewidth=0.8, label="offered = delivered"
            )
            top.set_xlim(lo, hi)
            bottom.set_xlim(lo, hi)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(EngFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        top.set_yscale("log")
        top.yaxis.set_major_formatter(EngFormatter())
        top.yaxis.set_minor_formatter(NullFormatter())
        top.set_title(f"{size}-byte payload")
        top.set_ylabel("delivered pkt/s")
        top.grid(alpha=0.3, which="both")
        bottom.set_xlabel("offered pkt/s (star: as fast as iperf3 can send)")
        bottom.set_ylabel("loss %")
        bottom.set_ylim(-2, 102)
        bottom.grid(alpha=0.3, which="both")
        if col == 0:
            top.legend(fontsize=7)
    fig.suptitle(
        "UDP: delivered packets/s and loss vs offered rate (median of rounds)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_ping(plt: Any, results: Results, path: Path) -> bool:
    keys = [k for k, m in results.metrics.items() if m.group == "ping" and m.table]
    if not keys:
        return False
    return _bar_plot(
        plt,
        results,
        keys,
        [f"{results.metrics[k].scenario}\n{results.metrics[k].name}" for k in keys],
        size=(7, 4.5),
        ylabel="ms (log scale)",
        title="Ping RTT client -> target (whiskers: min-max of rounds)",
        path=path,
    )


def _plot_sessions(plt: Any, results: Results, path: Path) -> bool:
    rss = [m for m in results.metrics.values() if m.group == "sessions" and m.name == "rss"]
    labels = [
        label
        for label in results.labels
        if any(results.median(m.key, label) is not None for m in rss)
    ]
    if not labels:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    steps = sorted(int(str(m.param("sessions"))) for m in rss)
    for label in labels:
        color = COLORS[results.labels.index(label)]
        points = [(n, results.median(f"sessions.rss.{n}", label)) for n in steps]
        shown = [(n, v) for n, v in points if v is not None]
        rate = results.median("sessions.rate", label)
        left.plot(
            [max(n, 0.5) for n, _ in shown],
            [v for _, v in shown],
            "o-",
            color=color,
            label=f"{label} ({fmt(rate)} sessions/s)",
        )
        per = [(n, results.median(f"sessions.per_session.{n}", label)) for n in steps if n > 0]
        shown_per = [(n, v) for n, v in per if v is not None]
        offset = (labels.index(label) - (len(labels) - 1) / 2) * 0.35
        right.bar(
            [i + offset for i in range(len(shown_per))],
            [v for _, v in shown_per],
            0.35,
            color=color,
            label=label,
        )
        right.set_xticks(range(len(shown_per)))
        right.set_xticklabels([f"{n} open" for n, _ in shown_per])
    left.set_xscale("log")
    left.set_xlabel("open idle sessions (0 plotted at 0.5)")
    left.set_ylabel("relay RSS, MiB")
    left.set_title("Relay memory vs open sessions")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    right.set_ylabel("KiB per session (RSS growth / sessions)")
    right.set_title("Relay memory per session")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_ratios(plt: Any, results: Results, path: Path) -> bool:
    keys = [k for k, m in results.ordered() if m.table and results.ratio(k) is not None]
    if not keys:
        return False
    a, b = results.labels
    groups = list(dict.fromkeys(results.metrics[k].group for k in keys))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    fig, ax = plt.subplots(figsize=(9, 0.26 * len(keys) + 1.6))
    for y, key in enumerate(keys):
        metric = results.metrics[key]
        color = palette[groups.index(metric.group) % len(palette)]
        ratio = results.ratio(key)
        assert ratio is not None
        pair = [r for r in results.pair_ratios(key) if r is not None and r > 0]
        if ratio > 0:
            ax.plot([ratio], [y], "D", color=color, markersize=6)
        if pair:
            ax.plot(pair, [y] * len(pair), "|", color="black", markersize=9)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for group in groups:
        ax.plot([], [], "D", color=palette[groups.index(group) % len(palette)], label=group)
    ax.legend(fontsize=7, loc="best")
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(
        [
            f"{m.scenario}: {m.name} ({m.better} is better)"
            for m in (results.metrics[k] for k in keys)
        ],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(f"{b} / {a}  (diamond: ratio of medians; ticks: each round's pair)")
    ax.set_title("Every figure as a ratio B / A (1 = no difference)")
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_all(results: Results, directory: Path) -> list[Path]:
    """Write every plot there is data for into ``directory``; the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, draw in (
        ("tcp.png", _plot_tcp),
        ("cpu.png", _plot_cpu),
        ("udp.png", _plot_udp),
        ("ping.png", _plot_ping),
        ("sessions.png", _plot_sessions),
        ("ratios.png", _plot_ratios),
    ):
        path = directory / name
        if draw(plt, results, path):
            written.append(path)
    return written
