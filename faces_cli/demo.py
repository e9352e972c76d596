"""``faces demo`` and ``faces repro``: ``dvc repro`` of the pipeline (or ``dvc exp run`` with a
params profile), serialised with other DVC calls, then where to look. ``faces demo --direct``
runs the same flows one after the other without DVC."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SAMPLE_DIR = "data/sample"


def cmd_demo(args: argparse.Namespace) -> int:
    """``dvc repro`` of the pipeline on the bundled sample, then where to look.

    With ``--direct`` (implied by ``--out``, ``--out-dir`` or ``--raw-dir``) the flows run one
    after the other without DVC, as before the pipeline had a dvc.yaml.
    """
    if args.direct or args.out or args.out_dir or args.raw_dir:
        return _demo_direct(args)
    from faces_core import dvcrepo
    from flows.pipeline import lock_wait_s

    if not Path("dvc.yaml").is_file():
        print(
            "faces demo: no dvc.yaml here: run it from the project root, or use `faces demo --direct`", file=sys.stderr
        )
        return 2
    try:
        rc, output = dvcrepo.run_dvc(["repro"], wait_s=lock_wait_s(), on_line=print)
    except (dvcrepo.DvcBusyError, dvcrepo.DvcNotFoundError) as exc:
        print(f"faces demo: {exc}", file=sys.stderr)
        return 1
    if rc != 0:
        print(
            f"faces demo: dvc repro failed (exit status {rc}); `faces doctor` explains common causes", file=sys.stderr
        )
        return rc
    ran = dvcrepo.stages_run(output)
    print("\n" + where_to_look(ran))
    return 0


def where_to_look(ran: Sequence[str]) -> str:
    """What the pipeline wrote and the commands that show it (paths from params.yaml)."""
    from faces_core.report import format_summary
    from flows.params import load_params
    from flows.params.evaluate import evaluate_config
    from flows.params.ingest import ingest_settings
    from flows.params.train import train_paths

    params = load_params()
    out_dir = ingest_settings(params).out_dir
    _, paths = train_paths(params)
    eval_paths, _ = evaluate_config(params)
    lines = [f"dvc repro ran: {', '.join(ran) if ran else 'nothing (every stage up to date)'}"]
    summary = Path(out_dir) / "summary.json"
    if summary.is_file():
        lines.append(format_summary(json.loads(summary.read_text()), out_dir))
    lines += [
        f"model:     {paths.model_dir}/model.pt + model.json",
        f"metrics:   {paths.metrics_file}, {eval_paths.metrics_file}   (dvc metrics show; dvc metrics diff)",
        f"plots:     {paths.plots_file}, {eval_paths.plots_dir}/*.png   (dvc plots show: dvc_plots/index.html, offline)",
        "experiments: dvc exp run -S train.lr=0.0005; dvc exp show",
        "Prefect UI: faces serve, then the URL it prints",
        "The sample's faces are drawn, so these scores only show that the pipeline runs end to end.",
    ]
    return "\n".join(lines)


def format_heads(rows: list[dict[str, Any]]) -> str:
    """The embedding recipe's heads: CV macro-F1 ± std against the floor, ECE, published or not."""

    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else "-"

    lines = [f"  {'head':<13} {'CV macro-F1':>16} {'floor':>6} {'CV acc':>7} {'ECE':>6}  published"]
    for r in rows:
        f1 = f"{cell(r['cv_macro_f1'])} ± {cell(r['std'])}"
        lines.append(
            f"  {r['head']:<13} {f1:>16} {cell(r['floor_macro_f1']):>6} {cell(r['cv_accuracy']):>7} "
            f"{cell(r['ece_after']):>6}  {'yes' if r['published'] else 'no (not clearly above its floor)'}"
        )
    return "\n".join(lines)


def _demo_direct(args: argparse.Namespace) -> int:
    """Sample -> loopback image server -> ingest -> short train -> evaluate -> annotate, without DVC."""
    from faces_cli.annotate import format_summary as format_annotate
    from faces_core.report import format_summary
    from faces_core.sample.faces import write_annotate_sample
    from faces_core.sample.settings import sample_settings, write_sample
    from faces_core.sample.tcs import load_routes
    from faces_core.testing import LoopbackServer
    from faces_core.train.evaluate import format_eval
    from flows.annotate import annotate
    from flows.evaluate import evaluate
    from flows.ingest import ingest
    from flows.params.evaluate import evaluate_config
    from flows.params.ingest import ingest_settings
    from flows.params.train import train_paths
    from flows.train import train

    root = Path(args.out or DEFAULT_SAMPLE_DIR)
    tcs, imfdb_root = write_sample(sample_settings(out_dir=str(root), seed=args.seed))
    with LoopbackServer(load_routes(tcs.parent)) as server:
        summary = ingest(
            tcs=str(tcs),
            imfdb_root=str(imfdb_root),
            out_dir=args.out_dir,
            raw_dir=args.raw_dir,
            proxy=server.proxy_url,
        )
    out_dir = ingest_settings(out_dir=args.out_dir).out_dir
    print()
    print(format_summary(summary, out_dir))
    if args.no_train:
        return 0
    trained = train(data_dir=out_dir, epochs=args.epochs)
    _, paths = train_paths(data_dir=out_dir)
    if trained.get("recipe") == "embedding":
        print(f"\ntrained heads on the face trunk in {trained['seconds']}s (person-grouped cross-validation):")
        print(format_heads(trained["heads"]))
    else:
        score = trained["best_score"]
        scored = (
            f"validation score {score:.3f}" if score is not None else "val split too small to score: last epoch kept"
        )
        print(
            f"\ntrained {len(trained['epochs'])} epochs on {trained['device']}: best epoch {trained['best_epoch']}, "
            f"{scored}"
        )
    print(
        f"model:     {paths.model_dir}/model.pt + model.json\n"
        f"metrics:   {paths.metrics_file}\nplots:     {paths.plots_file}\n"
    )
    result = evaluate(data_dir=out_dir, split=args.eval_split)
    eval_paths, _ = evaluate_config(data_dir=out_dir, split=args.eval_split)
    print(format_eval(result, eval_paths.metrics_file, eval_paths.plots_dir))
    print("\nThe sample's faces are drawn, so these scores only show that the pipeline runs end to end.\n")
    photos = write_annotate_sample(root / "photos", seed=args.seed).root
    annotated = annotate(inputs=[str(photos)], out=args.annotations, model_dir=str(paths.model_dir), export="coco")
    print(format_annotate(annotated))
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """``dvc repro``, or ``dvc exp run -S ...`` with the overrides of a params profile."""
    from faces_core import dvcrepo
    from flows.pipeline import lock_wait_s

    extra = [a for i, a in enumerate(args.dvc_args) if not (i == 0 and a == "--")]
    if args.profile:
        try:
            dvc_args = ["exp", "run", *profile_overrides(args.profile), *extra]
        except (FileNotFoundError, ValueError) as exc:
            print(f"faces repro: {exc}", file=sys.stderr)
            return 2
    else:
        dvc_args = ["repro", *extra]
    print("dvc " + " ".join(dvc_args), flush=True)
    try:
        rc, _ = dvcrepo.run_dvc(dvc_args, wait_s=lock_wait_s(), on_line=print)
    except (dvcrepo.DvcBusyError, dvcrepo.DvcNotFoundError) as exc:
        print(f"faces repro: {exc}", file=sys.stderr)
        return 1
    return rc


def profile_overrides(name: str, root: Path = Path(".")) -> list[str]:
    """``-S key=value`` arguments of ``dvc exp run`` for ``params-<name>.yaml``.

    A profile file maps dotted params.yaml keys to values (``train.epochs: 8``); applied with
    ``dvc exp run -S``, the experiment records them and params.yaml itself is not edited by hand.

    Raises:
        FileNotFoundError: No such profile file.
        ValueError: The file is not a mapping of dotted keys.
    """
    import yaml

    path = root / f"params-{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem.removeprefix("params-") for p in root.glob("params-*.yaml"))
        raise FileNotFoundError(f"no profile {path}; profiles here: {', '.join(known) or 'none'}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and "." in k for k in data):
        raise ValueError(f"{path} must map dotted params keys to values, e.g. `train.epochs: 8`")
    args: list[str] = []
    for key, value in data.items():
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args
