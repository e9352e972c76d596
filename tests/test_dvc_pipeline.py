"""The DVC pipeline for real: `dvc repro` in a temporary git repository holding this checkout.

Stages run with tiny train params, report to the session's Prefect server, and are checked
as a user would: a second `dvc repro` does nothing; an experiment with another `train.lr`
reruns train and evaluate only; metrics, params and experiments show and diff; `dvc push`
and `dvc pull` round-trip through a local remote; `dvc plots show` draws its charts in
headless Chromium with the network blocked. The deps check is static: each stage's code
deps are exactly the project modules its command imports.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from faces_core.dvcrepo import stages_run
from tests.conftest import REPO

PACKAGES = ("faces_core", "tasks", "flows", "faces_cli")
STAGE_MODULES = {
    "sample": "flows.sample",
    "ingest": "flows.ingest",
    "train": "flows.train",
    "evaluate": "flows.evaluate",
    "annotate": "flows.annotate",
}
STAGES = list(STAGE_MODULES)
DEPLOYMENTS = ["ingest", "train", "evaluate", "annotate", "annotate-inbox", "pipeline"]
TINY = {
    "sample": {"slow_delay_s": 0.2},
    "ingest": {"workers": 1},
    "download": {"timeout_s": 2.0, "retries": 2, "backoff_s": 0.05, "backoff_max_s": 0.2},
    "train": {
        "backbone": "mobilenet_v2",
        "weights": "none",
        "input_size": 32,
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 16,
        "workers": 0,
        "device": "cpu",
        "log_every": 1,
    },
    "evaluate": {"workers": 0, "batch_size": 64, "device": "cpu"},
    "annotate": {"decode_threads": 1},
}


# --- static: deps are exactly what each stage imports -------------------------------------------


def _module_file(name: str, root: Path) -> Path | None:
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_files(module: str, root: Path = REPO) -> set[str]:
    """Project files ``module`` imports, directly or not, at module level or inside functions."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name, root)
        if path is None or path in seen:
            continue
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in PACKAGES]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PACKAGES:
                todo += [str(node.module), *(f"{node.module}.{a.name}" for a in node.names)]
    return {str(p.relative_to(root)) for p in seen}


def _code_deps(stage: dict[str, Any], root: Path = REPO) -> set[str]:
    files: set[str] = set()
    for dep in stage["deps"]:
        if dep.split("/")[0] not in PACKAGES:
            continue  # data
        path = root / dep
        files |= {str(p.relative_to(root)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
    return files


def test_stage_code_deps_are_exactly_its_imports() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGE_MODULES)
    for name, module in STAGE_MODULES.items():
        assert stages[name]["cmd"].split(" ")[:3] == ["python", "-m", module]
        imported = imported_files(module)
        declared = _code_deps(stages[name])
        assert declared == imported, (
            f"stage {name}: add {sorted(imported - declared)}, remove {sorted(declared - imported)}"
        )


def test_stage_params_cover_every_key_of_their_sections() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    owners = {"sample": ["sample"], "ingest": ["ingest", "download", "validate", "partition"]}
    for stage in STAGE_MODULES:
        declared = set(stages[stage]["params"])
        for section in owners.get(stage, [stage]):
            # annotate.inbox and annotate.adhoc_out configure runs outside DVC, not the DVC stage.
            keys = {f"{section}.{k}" for k in params[section]} - {"annotate.inbox", "annotate.adhoc_out"}
            assert section in declared or keys <= declared, f"{stage}: {sorted(keys - declared)} not tracked"


# --- dynamic: a real repository -----------------------------------------------------------------


def _files_of_checkout() -> list[str]:
    """Tracked and untracked-but-not-ignored files: what a fresh clone (plus local edits) has."""
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


class Repo:
    """A temporary git + DVC repository with this checkout's files and tiny train params."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}{proc.stderr[-6000:]}"
            )
        return proc

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(Path(sys.executable).with_name("dvc")), *args, check=check)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "-m", message)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Iterator[Repo]:
    from prefect.settings import PREFECT_API_URL

    root = tmp_path_factory.mktemp("dvc") / "faces"
    for rel in _files_of_checkout():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "FACES_PARAMS"}
    env |= {
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "GIT_AUTHOR_NAME": "faces tests",
        "GIT_AUTHOR_EMAIL": "tests@faces.invalid",
        "GIT_COMMITTER_NAME": "faces tests",
        "GIT_COMMITTER_EMAIL": "tests@faces.invalid",
    }
    repo = Repo(root, env)
    repo.run("git", "init", "-q", "-b", "main")
    repo.dvc("remote", "modify", "--local", "local", "url", str(root.parent / "remote"))
    repo.commit("checkout")
    yield repo


@pytest.fixture(scope="module")
def built(repo: Repo) -> dict[str, Any]:
    """`dvc repro` twice: what each printed and how long the second took."""
    first = repo.dvc("repro")
    started = time.monotonic()
    second = repo.dvc("repro")
    return {"first": first.stdout, "second": second.stdout, "second_s": time.monotonic() - started}


@pytest.mark.slow
def test_repro_builds_everything_then_does_nothing(repo: Repo, built: dict[str, Any]) -> None:
    assert stages_run(built["first"]) == STAGES
    root = repo.root
    summary = json.loads((root / "data/processed/summary.json").read_text())
    assert summary["sources"]["tcs"]["faces"] > 0 and summary["sources"]["imfdb"]["faces"] > 0
    assert (root / "models/model.pt").is_file() and (root / "models/model.json").is_file()
    assert len(json.loads((root / "metrics/train.json").read_text())) > 0
    assert json.loads((root / "metrics/eval_details.json").read_text())["attributes"]["gender"]["status"] == "ok"
    headline = json.loads((root / "metrics/eval.json").read_text())
    assert set(headline["gender"]) == {"acc", "f1", "floor_f1", "ece"}  # flat: one column per figure
    assert (root / "plots/train.csv").read_text().startswith("head,cv_macro_f1,")  # one row per head
    assert (root / "plots/confusion/gender.png").is_file()
    assert stages_run(built["second"]) == []
    assert "Data and pipelines are up to date." in built["second"]
    assert built["second_s"] < 30, f"a no-op dvc repro took {built['second_s']:.1f} s"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    assert (root / "data/annotations/coco.json").is_file()


@pytest.mark.slow
def test_train_param_experiment_reruns_only_what_uses_the_model(repo: Repo, built: dict[str, Any]) -> None:
    repo.commit("baseline: dvc repro on the sample")
    exp = repo.dvc("exp", "run", "-S", "train.lr=0.002", "--name", "lr-0002")
    assert stages_run(exp.stdout) == ["train", "evaluate", "annotate"]  # what depends on the model
    params_diff = json.loads(repo.dvc("params", "diff", "--json").stdout)
    lr = params_diff["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (0.001, 0.002)
    metrics = json.loads(repo.dvc("metrics", "show", "--json").stdout)
    assert "metrics/eval.json" in json.dumps(metrics) and "metrics/train.json" in json.dumps(metrics)
    repo.dvc("metrics", "diff", "--all", "--json")  # runs against HEAD without error
    shown = repo.dvc("exp", "show", "--csv").stdout
    assert "lr-0002" in shown and "0.002" in shown
    assert stages_run(repo.dvc("repro").stdout) == []  # the experiment's results are in the workspace


@pytest.mark.slow
def test_push_then_pull_restores_outputs(repo: Repo, built: dict[str, Any]) -> None:
    model = repo.root / "models/model.pt"
    before = _sha(model)
    repo.dvc("push")
    assert any((repo.root.parent / "remote").rglob("*")), "nothing reached the remote"
    shutil.rmtree(repo.root / "models")
    shutil.rmtree(repo.root / ".dvc/cache")
    repo.dvc("pull")
    assert _sha(model) == before
    assert stages_run(repo.dvc("repro").stdout) == []


@pytest.mark.slow
def test_plots_render_offline_in_headless_chromium(repo: Repo, built: dict[str, Any]) -> None:
    from scripts.screenshots import charts_drawn, chromium, dvc_plots_page, find_chromium

    page = dvc_plots_page(repo.root, repo.root / "dvc_plots")
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "vega@5.33.1" in html
    if find_chromium() is None:
        pytest.skip("chromium not installed (.ci/run installs it: apt-get install -y chromium)")
    assert charts_drawn(chromium(page.as_uri())) >= 2  # train-score and train-loss
    stock = dvc_plots_page(repo.root, repo.root / "stock_plots", stock_template=True)
    assert charts_drawn(chromium(stock.as_uri())) == 0, "the network was not blocked: the CDN page drew charts"
    shot = repo.root / "dvc-plots.png"
    chromium(page.as_uri(), screenshot=shot, window=(1280, 1400))
    assert shot.stat().st_size > 10_000


def _outs(root: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"][stage].get("outs", [])}


@pytest.mark.slow
def test_identical_reingest_keeps_every_hash_and_a_workers_change_reruns_ingest_only(
    repo: Repo, built: dict[str, Any]
) -> None:
    root = repo.root
    repo.dvc("repro")  # whatever an earlier test left (an applied experiment) is settled first
    lock_before = (root / "dvc.lock").read_text()
    ingest_outs = _outs(root, "ingest")
    forced = repo.dvc("repro", "--single-item", "--force", "ingest")
    assert stages_run(forced.stdout) == ["ingest"]
    # Same inputs, same bytes: no lock file, journal or clock inside the output changes its hash.
    assert (root / "dvc.lock").read_text() == lock_before
    assert "Data and pipelines are up to date." in repo.dvc("status").stdout
    assert stages_run(repo.dvc("repro").stdout) == []

    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    params["ingest"]["workers"] = 2  # changes how, not what: the faces are byte-identical
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert stages_run(repo.dvc("repro").stdout) == ["ingest"]
        assert _outs(root, "ingest") == ingest_outs
    finally:
        (root / "params.yaml").write_text(original)
    # Back to the old value: ingest again at most (DVC's run cache may restore it), nothing else.
    assert set(stages_run(repo.dvc("repro").stdout)) <= {"ingest"}
    assert (root / "dvc.lock").read_text() == lock_before


@pytest.mark.slow
def test_inbox_annotations_survive_repro_and_checkout(repo: Repo, built: dict[str, Any]) -> None:
    from faces_core.annotate.store import read_annotations

    root = repo.root
    inbox = root / "data/inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in (root / "data/sample/photos").iterdir() if p.suffix.lower() in (".jpg", ".png"))[:3]
    for photo in photos:
        shutil.copy2(photo, inbox / photo.name)
    script = "from flows.annotate import annotate_inbox; import json; print(json.dumps(annotate_inbox(settle_s=0.1)))"
    summary = json.loads(repo.run(sys.executable, "-c", script).stdout.strip().splitlines()[-1])
    assert summary["out"] == "data/inbox-annotations" and summary["files"] == len(photos)
    before = read_annotations(root / "data/inbox-annotations")
    assert before.num_rows > 0

    repo.dvc("repro")
    repo.dvc("checkout", "--force")
    after = read_annotations(root / "data/inbox-annotations")
    assert after.sort_by("file").to_pylist() == before.sort_by("file").to_pylist()
    # A second inbox run finds them done: nothing is annotated twice.
    again = json.loads(repo.run(sys.executable, "-c", script).stdout.strip().splitlines()[-1])
    assert again["files"] == 0 and again["skipped"] == len(photos)

    # Writing into a DVC stage's output is refused before anything is written.
    refused = repo.run(sys.executable, "-m", "flows.annotate", str(inbox), "--out", "data/annotations", check=False)
    assert refused.returncode == 2, refused.stderr
    assert "stage annotate" in refused.stderr and "dvc add" in refused.stderr
    doctor = repo.run(sys.executable, "-m", "faces_cli.doctor", "--json", check=False)
    outputs = next(json.loads(line) for line in doctor.stdout.splitlines() if '"outputs"' in line)
    assert outputs["status"] == "ok"


EXP_VIEW = ("--drop", ".*", "--keep", "Experiment|.*score|.*\\.f1")
"""The README's headline view of ``dvc exp show``."""


@pytest.mark.slow
def test_exp_show_headline_view_fits_200_columns(repo: Repo, built: dict[str, Any]) -> None:
    repo.commit("headline metrics")
    env = repo.env | {"COLUMNS": "200"}
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "exp", "show", "--no-pager", *EXP_VIEW],
        cwd=repo.root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 200, shown.stdout
    text = shown.stdout
    assert "…" not in text, text  # nothing cut off
    assert all(name in text for name in ("score", "gender.f1", "expression.f1")), text
    shown_metrics = json.loads(repo.dvc("metrics", "show", "--json").stdout)

    def leaves(value: Any) -> int:
        return sum(leaves(v) for v in value.values()) if isinstance(value, dict) else 1

    files = next(iter(shown_metrics.values()))["data"]
    counts = {name: leaves(entry["data"]) for name, entry in files.items()}
    assert counts["metrics/eval.json"] <= 2 + 4 * 10 and counts["metrics/train.json"] <= 4 + 2 * 10, counts  # was ~300


# --- serving: every deployment, the pipeline run by name, the UI in a browser -------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """`python -m flows.serve` in the repository, its output collected line by line."""

    def __init__(self, repo: Repo, env: dict[str, str], *args: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", *args],
            cwd=repo.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"serve never printed {text!r}:\n" + "\n".join(self.lines[-60:]))

    def interrupt(self) -> int:
        import signal

        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(timeout=10)
        return rc


def _api(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    response = httpx.request(method, f"{api}{path}", json=body, timeout=30, trust_env=False)
    response.raise_for_status()
    return response.json()


def _wait_deployments(api: str, serve: Serve, timeout: float = 120) -> dict[str, Any]:
    """The served deployments by name, once all are registered and the pipeline's schedule is active."""
    deadline = time.monotonic() + timeout
    deployments: dict[str, Any] = {}
    while time.monotonic() < deadline:
        deployments = {d["name"]: d for d in _api(api, "POST", "/deployments/filter", {})}
        if len(deployments) == len(DEPLOYMENTS) and not deployments["pipeline"]["paused"]:
            return deployments
        time.sleep(1)
    raise AssertionError(f"deployments {sorted(deployments)} after {timeout} s:\n" + "\n".join(serve.lines[-40:]))


def _wait_final(api: str, run_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = _api(api, "GET", f"/flow_runs/{run_id}")
        if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} still {run.get('state_type')} after {timeout} s")


@pytest.mark.slow
def test_serve_runs_pipeline_by_name_and_the_ui_shows_it(repo: Repo, built: dict[str, Any]) -> None:
    """`faces serve` without PREFECT_API_URL starts its own server, serves every deployment,
    runs `pipeline` triggered with `prefect deployment run`, stops on Ctrl-C, and its schedule
    is back after a restart."""
    from scripts.screenshots import chromium, find_chromium

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in repo.env.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(repo.root.parent / "prefect-home"), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    # An evaluate-only param change: the pipeline run must rerun evaluate and nothing else.
    params = yaml.safe_load((repo.root / "params.yaml").read_text())
    params["evaluate"]["batch_size"] = 32
    (repo.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    serve = Serve(repo, env, "--port", str(port), "--pipeline-every", "3600")
    try:
        assert f"UI at http://127.0.0.1:{port}" in serve.wait_for("Started a Prefect server")
        serve.wait_for("Serving " + ", ".join(DEPLOYMENTS))
        deployments = _wait_deployments(api, serve)
        assert set(deployments) == set(DEPLOYMENTS)
        assert deployments["pipeline"]["schedules"] and not deployments["pipeline"]["paused"]

        run_env = env | {"PREFECT_API_URL": api}
        prefect = str(Path(sys.executable).with_name("prefect"))
        trigger = subprocess.run(
            [prefect, "deployment", "run", "pipeline/pipeline"],
            cwd=repo.root,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        run_id = next(line.split()[-1] for line in trigger.stdout.splitlines() if "UUID" in line)
        run = _wait_final(api, run_id)
        assert run["state_type"] == "COMPLETED", "\n".join(serve.lines[-80:])
        assert run["name"].startswith("pipeline-") and {"faces", "dvc"} <= set(run["tags"])
        artifacts = _api(api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        report = next(a for a in artifacts if a["key"] == "pipeline-repro")
        assert "dvc repro succeeded" in report["data"] and "Stages run: `evaluate`" in report["data"]
        # The stage DVC ran is a flow run of its own on the same server, with its artifact.
        evaluate_runs = _api(api, "POST", "/flow_runs/filter", {"flows": {"name": {"any_": ["evaluate"]}}})
        assert len(evaluate_runs) == 1 and evaluate_runs[0]["state_type"] == "COMPLETED"
        # ... tagged as part of this pipeline run, which links to it.
        tag = f"pipeline-{run_id.replace('-', '')[:8]}"
        assert {"faces", "evaluate", "pipeline", tag} <= set(evaluate_runs[0]["tags"])
        assert f"/runs/flow-run/{evaluate_runs[0]['id']}" in report["data"]
        stage_artifacts = _api(
            api, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [evaluate_runs[0]["id"]]}}}
        )
        assert "evaluate-metrics" in {a["key"] for a in stage_artifacts}

        if find_chromium() is not None:
            url = f"http://127.0.0.1:{port}/runs/flow-run/{run_id}"
            assert run["name"] in chromium(url), "the UI's flow-run page does not show the run's name"
            shot = repo.root / "prefect-flow-run.png"
            chromium(url, screenshot=shot)
            assert shot.stat().st_size > 10_000
    finally:
        rc = serve.interrupt()
    assert rc == 0, "\n".join(serve.lines[-40:])
    assert serve.lines[-1] == "faces serve: stopped." and "Stopped the Prefect server." in serve.lines

    # Restart: same database, the schedule is active again and the past run is still there.
    serve = Serve(repo, env, "--port", str(port), "--pipeline-every", "3600")
    try:
        serve.wait_for("Serving " + ", ".join(DEPLOYMENTS))
        pipeline = _wait_deployments(api, serve)["pipeline"]
        assert pipeline["schedules"][0]["schedule"]["interval"] == 3600 and not pipeline["paused"]
        assert _api(api, "GET", f"/flow_runs/{run_id}")["state_type"] == "COMPLETED"
    finally:
        assert serve.interrupt() == 0
    if find_chromium() is None:
        pytest.skip("chromium not installed (.ci/run installs it): the UI page was not checked")
