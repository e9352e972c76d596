"""Headless-Chromium screenshots of what a person looks at: `dvc plots show` and the Prefect UI.

    python scripts/screenshots.py plots [--repo .] [--out docs/dvc-plots.png]
    python scripts/screenshots.py flow-run http://127.0.0.1:4200 FLOW_RUN_ID [--expect NAME] [--out docs/prefect-flow-run.png]

Chromium runs with the network blocked: every request goes to a dead proxy (127.0.0.1:9)
and names resolve to nothing, except loopback, which Chromium never sends through a proxy
(the Prefect UI is on loopback). So the plots page is shown to render from its own inlined
Vega (vendor/vega/), and `--cdn-check` shows the same page with DVC's stock CDN template
draws nothing. Needs Debian's `chromium` (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)
# No network but loopback: a proxy that refuses everything (loopback bypasses proxies) and
# a resolver that finds no name but the loopback ones.
OFFLINE_FLAGS = (
    "--proxy-server=http://127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)
CHART = re.compile(r'<(svg|canvas)[^>]*class="marks"')


def find_chromium() -> str | None:
    """Path of a Chromium executable, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium(
    url: str,
    *,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 1000),
    budget_ms: int = 15000,
    timeout_s: float = 120.0,
) -> str:
    """Load ``url`` offline (loopback only) in a fresh profile; the DOM after scripts ran.

    With ``screenshot`` it saves a PNG instead (Chromium cannot do both in one run), and
    returns "".

    Raises:
        FileNotFoundError: No Chromium installed.
        RuntimeError: Chromium failed (its stderr is in the message).
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="faces-chromium-") as profile:
        args = [
            exe,
            *BASE_FLAGS,
            *OFFLINE_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={budget_ms}",
        ]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or (screenshot is not None and not screenshot.is_file()):
        raise RuntimeError(f"chromium failed on {url} (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return "" if screenshot else proc.stdout


def charts_drawn(dom: str) -> int:
    """How many Vega charts (their ``marks`` svg or canvas) a page's DOM holds."""
    return len(CHART.findall(dom))


def dvc_plots_page(repo: Path, out_dir: Path, stock_template: bool = False) -> Path:
    """Run `dvc plots show` in ``repo`` into ``out_dir``; the page's path.

    ``stock_template`` renders with DVC's own template (Vega from a CDN) for comparison.
    """
    dvc = Path(sys.executable).with_name("dvc")
    args = [str(dvc) if dvc.exists() else "dvc", "plots", "show", "-o", str(out_dir)]
    if stock_template:
        stock = out_dir.parent / f"{out_dir.name}-stock-template.html"
        from dvc_render.html import PAGE_HTML

        stock.write_text(PAGE_HTML)
        args += ["--html-template", str(stock)]
    proc = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc plots show failed: {proc.stdout}{proc.stderr}")
    return out_dir / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Headless-Chromium screenshots, network blocked.")
    sub = parser.add_subparsers(dest="what", required=True)
    plots = sub.add_parser("plots", help="`dvc plots show`, then a screenshot of its page")
    plots.add_argument("--repo", type=Path, default=Path("."))
    plots.add_argument("--out", type=Path, default=Path("docs/dvc-plots.png"))
    plots.add_argument("--cdn-check", action="store_true", help="also show DVC's stock CDN page draws nothing")
    run = sub.add_parser("flow-run", help="a screenshot of the Prefect UI's page of one flow run")
    run.add_argument("ui", help="UI base URL, e.g. http://127.0.0.1:4200")
    run.add_argument("flow_run_id")
    run.add_argument("--expect", help="text the page must show (the run's name)")
    run.add_argument("--out", type=Path, default=Path("docs/prefect-flow-run.png"))
    args = parser.parse_args(argv)

    if args.what == "plots":
        with tempfile.TemporaryDirectory() as tmp:
            page = dvc_plots_page(args.repo, Path(tmp) / "dvc_plots")
            drawn = charts_drawn(chromium(page.as_uri()))
            print(f"{page}: {drawn} chart(s) drawn with the network blocked")
            if args.cdn_check:
                stock = dvc_plots_page(args.repo, Path(tmp) / "stock", stock_template=True)
                print(f"DVC's stock CDN page: {charts_drawn(chromium(stock.as_uri()))} chart(s) drawn")
            if not drawn:
                return 1
            args.out.parent.mkdir(parents=True, exist_ok=True)
            chromium(page.as_uri(), screenshot=args.out.resolve(), window=(1280, 1400))
    else:
        url = f"{args.ui.rstrip('/')}/runs/flow-run/{args.flow_run_id}"
        dom = chromium(url)
        if args.expect and args.expect not in dom:
            print(f"{url} does not show {args.expect!r}", file=sys.stderr)
            return 1
        args.out.parent.mkdir(parents=True, exist_ok=True)
        chromium(url, screenshot=args.out.resolve())
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
