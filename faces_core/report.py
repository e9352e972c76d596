"""Human-readable views of an ingest summary (summary.json): terminal text and Markdown."""

from __future__ import annotations

from typing import Any

from faces_core.errors import REASONS


def format_summary(summary: dict[str, Any], out_dir: str) -> str:
    """Plain-text per-source summary for the terminal."""
    lines = [f"faces kept: {summary['faces']}   rejections: {summary['rejections']}"]
    for source, entry in summary["sources"].items():
        lines.append(f"  {source}: {entry['faces']} faces from {entry['images']} images")
        lines.append("    buckets: " + ", ".join(f"{b}={n}" for b, n in entry["buckets"].items()))
        lines.append("    splits:  " + ", ".join(f"{s}={n}" for s, n in entry["splits"].items()))
        if entry["rejected"]:
            lines.append("    rejected: " + ", ".join(f"{r}={n}" for r, n in entry["rejected"].items()))
    lines.append(f"dataset:   {out_dir}/faces/source=*/bucket=*/part-*.parquet")
    lines.append(f"error log: {out_dir}/errors.parquet")
    lines.append(f"summary:   {out_dir}/summary.json")
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any], out_dir: str) -> str:
    """Markdown tables of kept faces per bucket/split and rejections per reason."""
    lines = [
        f"# Ingest: {summary['faces']} faces kept, {summary['rejections']} rejections",
        "",
        f"Output: `{out_dir}/faces` (Parquet), `{out_dir}/errors.parquet`, `{out_dir}/summary.json`",
    ]
    for source, entry in summary["sources"].items():
        lines += ["", f"## {source}: {entry['faces']} faces from {entry['images']} images", ""]
        lines += ["| bucket | faces |", "|---|---:|"] + [f"| {b} | {n} |" for b, n in entry["buckets"].items()]
        lines += ["", "| split | faces |", "|---|---:|"] + [f"| {s} | {n} |" for s, n in entry["splits"].items()]
        if entry["rejected"]:
            lines += ["", "| rejected: reason | count | meaning |", "|---|---:|---|"]
            lines += [f"| {r} | {n} | {REASONS.get(r, '')} |" for r, n in entry["rejected"].items()]
    return "\n".join(lines) + "\n"
