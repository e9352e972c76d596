"""DataLoader worker set-up that survives being forked from inside a Prefect flow run.

A forked DataLoader worker inherits the parent's ``threading`` at-exit callbacks. Prefect
(3.8) registers one per background service (log and event shippers) and resets the service
in forked children, after which that callback fails an assertion when the child exits. The
worker has done all its work by then, but it exits with status 1 and the DataLoader raises
"DataLoader worker exited unexpectedly" in the parent, so any ``workers > 0`` run inside a
flow fails at the end of its first pass. The callbacks belong to threads that do not exist
in the child, so a worker drops them as it starts. Outside Prefect this changes nothing.
"""

from __future__ import annotations

import threading


def drop_inherited_thread_atexits(worker_id: int = 0) -> None:
    """``worker_init_fn`` for DataLoaders: forget at-exit callbacks inherited from the parent.

    Args:
        worker_id: Passed by the DataLoader; unused.
    """
    callbacks = getattr(threading, "_threading_atexits", None)
    if isinstance(callbacks, list):
        callbacks.clear()
