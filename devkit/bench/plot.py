"""`--plot out.png`: for the latency-sweep, throughput and e2e p99 against provider latency,
worker and plain loop; for the soak, the worker's RSS over time.

matplotlib is an optional extra (`pip install 'llm-worker[plot]'`); without it the suite says
so and writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PlotUnavailable", "plot_soak", "plot_sweep", "series"]


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def series(runs: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """system -> [(provider latency, throughput/s, e2e p99 ms)] ordered by latency."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for r in runs:
        tput, p99 = r.get("throughput_per_s"), (r.get("e2e_ms") or {}).get("p99")
        if tput is None or p99 is None:
            continue
        out.setdefault(r["system"], []).append((float(r["provider_latency_ms"]), tput, p99))
    return {k: sorted(v) for k, v in out.items()}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'llm-worker[plot]'") from exc
    return plt


def plot_soak(soak: dict[str, Any], path: str, title: str) -> None:
    """The soak's JSON line (`rss_mb` every `every_s`) -> RSS over time, warm-up marked."""
    plt = _pyplot()
    every = float(soak.get("rss_every_s", 10.0))
    rss = soak["rss_mb"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([i * every / 60 for i in range(len(rss))], rss, label="worker RSS")
    ax.axvline(soak["warmup_s"] / 60, color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(
        f"{soak['rate']:.0f} prompts/s for {soak['duration_s'] / 60:.0f} min; slope after"
        f" warm-up {soak['rss_slope_mb_per_h']} MB/h, second half"
        f" {soak.get('rss_slope_second_half_mb_per_h')} MB/h",
        fontsize=9,
    )
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(runs: Sequence[dict[str, Any]], path: str, title: str) -> None:
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for system, points in series(runs).items():
        xs = [p[0] for p in points]
        ax1.plot(xs, [p[1] for p in points], marker="o", label=system)
        ax2.plot(xs, [p[2] / 1000 for p in points], marker="o", label=system)
    ax2.set_yscale("log")
    for ax, ylabel in ((ax1, "completions/s"), (ax2, "end-to-end p99 (s)")):
        ax.set_xscale("log")
        ax.set_xlabel("provider latency (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax1.set_title("throughput")
    ax2.set_title("p99, all prompts published at once")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
