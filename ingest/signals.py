"""How an ingest's processes stop: with their parent, and on SIGTERM as on Ctrl-C.

A worker left behind by a killed parent would keep writing into a dataset that the
next run (which takes the lock) believes it owns; so each worker asks the kernel to
kill it when its parent dies. SIGTERM (what `kill`, systemd and schedulers send) raises
KeyboardInterrupt in the parent, the path Ctrl-C takes: workers are stopped, temporary
files removed, and the next run resumes.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 1.0
STOP_WAIT_SECONDS = 5.0


def exit_with_parent(parent_pid: int) -> None:
    """In a worker: die when the parent process dies (and ignore Ctrl-C: the parent stops us).

    Linux: PR_SET_PDEATHSIG; elsewhere a thread that polls the parent's pid.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not (sys.platform.startswith("linux") and _set_parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the kernel was told
        os._exit(1)


def _set_parent_death_signal() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def stop_workers() -> None:
    """Terminate this process's multiprocessing children (the pool's workers) and reap them.

    Their shards in flight are abandoned: no state record, so the next run redoes them.
    """
    children = mp.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():  # e.g. in an fsync on a busy disk: not the user's concern
            log.debug("worker %s did not stop on SIGTERM; killing it", child.pid)
            child.kill()
            child.join()
