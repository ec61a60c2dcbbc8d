"""Ingest on a Ray cluster (SPEC §7): each Ray task writes whole shards.

The plan is made once by the caller; Ray only runs `write_task` per shard, so the
shards and manifest are byte-identical to the local executor's. The output folder
must be on storage every Ray node can write (the same path on each node).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import islice

from bionas.errors import BionasError
from bionas.ingest.execute import (
    IN_FLIGHT_PER_WORKER,
    FetchRows,
    Settle,
    ShardTask,
    write_task,
)

INSTALL_HINT = "Ray is not installed: pip install 'bionas[ray]' (or pip install ray)"


def run_ray(
    todo: list[ShardTask],
    fetch: FetchRows,
    settle: Settle,
    advance: Callable[[int], object],
    workers: int,
    address: str | None,
) -> int:
    """Run `write_task` for every shard as a Ray task; return the images processed.

    Tasks are sent a few per cluster CPU ahead, each with its rows fetched just then;
    `settle(task, outcome)` takes each outcome (`ray.get` raises a task's exception as
    an instance of its own class, so a TransientReadError fails only its shard).
    """
    try:
        import ray
    except ImportError:
        raise BionasError(INSTALL_HINT) from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(write_task)
        window = IN_FLIGHT_PER_WORKER * max(workers, int(ray.cluster_resources().get("CPU", 1)))
        queue, pending, processed = iter(todo), {}, 0
        while True:
            for task in islice(queue, window - len(pending)):
                pending[remote.remote(task, fetch(task.frame_rows))] = task
            if not pending:
                return processed
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                task = pending.pop(ref)
                settle(task, partial(ray.get, ref))
                processed += task.size
                advance(task.size)
    finally:
        if started_here:
            ray.shutdown()
