"""Prefect flows of the faces pipeline and their deployments.

Importing this package, before Prefect makes its API client, keeps loopback addresses out
of any proxy set in the environment (see :func:`keep_loopback_off_proxy`) and sets quiet,
local Prefect defaults (:func:`prefect_defaults`), so ``python -m flows.<stage>`` behaves
like ``faces <stage>``.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def keep_loopback_off_proxy(environ: MutableMapping[str, str] | None = None) -> None:
    """Add loopback hosts to ``no_proxy``/``NO_PROXY`` so only image downloads use a proxy.

    The README tells users behind a proxy to set ``http_proxy``; Prefect's client (httpx)
    honours it too and sent its calls to the local API server (127.0.0.1) through the proxy,
    which killed the run before it started. Existing entries are kept; both spellings are
    set because tools disagree on which one they read.

    Args:
        environ: The environment to change (``os.environ`` when None).
    """
    env = os.environ if environ is None else environ
    current = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if current.strip() == "*":
        return
    entries = [e.strip() for e in current.split(",") if e.strip()]
    merged = ",".join([*entries, *(h for h in LOOPBACK_HOSTS if h not in entries)])
    env["no_proxy"] = env["NO_PROXY"] = merged


def prefect_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """No telemetry (the machines are offline), and our loggers visible in Prefect run logs.

    Only unset variables are filled in: a user's own settings win.
    """
    env = os.environ if environ is None else environ
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "faces_core")
    env.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


NO_PROXY_AT_START = {k: os.environ[k] for k in ("no_proxy", "NO_PROXY") if k in os.environ}
"""``no_proxy``/``NO_PROXY`` as the user set them, before :func:`keep_loopback_off_proxy` (for ``faces doctor``)."""


keep_loopback_off_proxy()
prefect_defaults()
