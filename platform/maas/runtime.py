"""Connecting to Ray: an embedded local instance when no address is given, a cluster otherwise."""

from __future__ import annotations

import os
from typing import Optional


def ensure_ray(address: Optional[str] = None, quiet: bool = True, worker_logs: Optional[bool] = None,
               runtime_env: Optional[dict] = None) -> bool:
    """Make sure this process is connected to Ray; returns True if this call started a local instance.

    With no ``address`` and no ``RAY_ADDRESS``, a private local Ray is started in-process (``address="local"``,
    so an unrelated head on this machine is never joined by accident). Ray 2.60 token authentication stays
    on: the local instance creates its token (``~/.ray/auth_token``) and clients of a cluster read it from
    there or from ``RAY_AUTH_TOKEN``. ``quiet`` hides Ray's own INFO logs and progress bars; ``worker_logs``
    (default: not quiet) forwards what workers print, e.g. the per-epoch progress of training.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if quiet:
        import logging

        from ray.data import DataContext

        for name in ("ray.data", "ray.train", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # also silences "progress bars disabled"
        DataContext.get_current().enable_progress_bars = False
    kwargs = dict(logging_level="WARNING", log_to_driver=(not quiet) if worker_logs is None else worker_logs)
    if address is None:
        ray.init(address="local", include_dashboard=False, **kwargs)
        return True
    ray.init(address=address, runtime_env=runtime_env, **kwargs)
    return False
