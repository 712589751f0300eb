"""Run one function over many items, one after another here or as Ray tasks on a cluster: the same function,
the same results, in the order they finish.

    for item, outcome in run_tasks(fn, items):                                  # here, in order
    for item, outcome in run_tasks(fn, items, ray_address="auto", num_gpus=1):  # Ray tasks, one GPU each

`outcome` is what `fn(item)` returned, or the exception it raised (a failed item never stops the others).
With Ray, `fn` must be importable by the workers (a module-level function of an installed package), and the
items and results picklable. `ray_address` is passed to `ray.init(address=...)`: "local" starts a cluster on
this machine, "auto" joins the one started here with `ray start`, "ray://host:10001" a remote one. Ray is
imported only when asked for.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator

from .errors import MotionTransferError

logger = logging.getLogger(__name__)


def run_tasks(fn: Callable[[Any], Any], items: Iterable[Any], *, ray_address: str | None = None,
              num_gpus: float | None = None, num_cpus: float = 1,
              ray_init: dict | None = None) -> Iterator[tuple[Any, Any]]:
    """Yields (item, fn(item) or the exception it raised), locally in order or, with `ray_address`, as the Ray
    tasks finish. `num_gpus` per task (None: 1 when the cluster has GPUs, else 0); `num_cpus` per task;
    `ray_init`: more keyword arguments for `ray.init` (e.g. `num_cpus`, `object_store_memory` for a local
    cluster)."""
    items = list(items)
    if ray_address is None:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as e:                   # noqa: BLE001 - reported to the caller, who goes on
                logger.debug("task failed", exc_info=True)
                yield item, e
        return
    yield from _run_on_ray(fn, items, ray_address, num_gpus, num_cpus, ray_init or {})


def _run_on_ray(fn, items: list, address: str, num_gpus: float | None, num_cpus: float,
                init: dict) -> Iterator[tuple[Any, Any]]:
    try:
        import ray
    except ImportError:
        raise MotionTransferError("--ray needs Ray: pip install 'motiontransfer[batch]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False, **init)
    try:
        if num_gpus is None:
            num_gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        task = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(fn)
        pending = {task.remote(item): item for item in items}
        logger.info("%d Ray tasks (%g CPU, %g GPU each) on %s", len(pending), num_cpus, num_gpus,
                    ray.cluster_resources())
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            item = pending.pop(done[0])
            try:
                yield item, ray.get(done[0])
            except ray.exceptions.RayTaskError as e:
                yield item, e.as_instanceof_cause()
            except ray.exceptions.RayError as e:       # a worker died, the task was cancelled, ...
                yield item, e
    finally:
        if started:
            ray.shutdown()


__all__ = ["run_tasks"]
