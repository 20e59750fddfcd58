"""How latency results read in the reports (targets/speed_report.py's tables and targets/speed_peers.py's
section): one formatting for both, so a median, a failure and a ratio look the same everywhere."""
from __future__ import annotations


def format_ms(r) -> str:
    """``median (IQR)`` in ms of a latency result; ``failed`` for an error; ``-`` when absent."""
    if r is None:
        return "-"
    if "error" in r:
        return "failed"
    return f"{r['median_ms']:.3f} ({r['iqr_ms']:.3f})"


def latency_ratio(a, b):
    """a / b for two latency results, None when either is missing."""
    if not a or not b or "median_ms" not in a or "median_ms" not in b or b["median_ms"] <= 0:
        return None
    return a["median_ms"] / b["median_ms"]


def format_ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"
