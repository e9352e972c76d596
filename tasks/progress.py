"""Progress of a long task as a Prefect progress artifact (the run page's progress bar), shared
by every stage's tasks."""

from __future__ import annotations

import threading
import time
from typing import cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class Progress:
    """Throttled bridge from ``progress(done, total)`` callbacks to a Prefect progress artifact."""

    def __init__(self, key: str, description: str) -> None:
        # Sync call inside a flow: returns the UUID (typed as UUID | Coroutine by Prefect).
        self.artifact_id = cast(UUID, create_progress_artifact(progress=0.0, key=key, description=description))
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        with self._lock:
            if done < total and now - self._last < 1.0:
                return
            self._last = now
        update_progress_artifact(self.artifact_id, progress=100.0 * done / max(total, 1))
