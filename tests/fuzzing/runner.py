"""Run a fuzz target's cases in a child process: results, hangs and deaths as Outcomes."""

from __future__ import annotations

import logging
import multiprocessing as mp
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROBLEMS = ("crash", "hang", "failure")
READY_S = 120.0  # for the child's imports and set-up, before its first case
EXIT_GRACE_S = 10.0


@dataclass(frozen=True)
class Outcome:
    """One case: `verdict` "ok" or a problem (PROBLEMS); `tally` counts what it saw."""

    index: int
    verdict: str
    tally: dict[str, int] = field(default_factory=dict)
    detail: str = ""


@dataclass
class Report:
    target: str
    seed: int
    outcomes: list[Outcome]
    seconds: float

    @property
    def problems(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.verdict in PROBLEMS]

    def tally(self) -> Counter:
        """Every case's counts summed, with the number of cases of each problem."""
        total: Counter = Counter(dict.fromkeys(PROBLEMS, 0))
        for outcome in self.outcomes:
            total.update(outcome.tally)
            if outcome.verdict in PROBLEMS:
                total[outcome.verdict] += 1
        return total

    def describe(self, limit: int = 5) -> str:
        lines = [f"{self.target} fuzz, seed {self.seed}: {len(self.outcomes)} cases, "
                 f"{len(self.problems)} problem(s)"]  # fmt: skip
        for outcome in self.problems[:limit]:
            lines.append(f"case {outcome.index} ({outcome.verdict}): {outcome.detail}")
            lines.append(f"  reproduce: {self.target}(workdir).run({self.seed}, {outcome.index})")
        return "\n".join(lines)


def crash_detail(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def fuzz(
    target: type,
    seed: int,
    workdir: Path,
    seconds: float,
    max_cases: int,
    case_timeout: float,
    min_cases: int = 0,
) -> Report:
    """Cases 0, 1, ... of `target(workdir)` until `max_cases` ran or `seconds` passed (but
    at least `min_cases`, however slow the machine), in a child process. A case with no
    result after `case_timeout` s is a hang (the child is killed, a fresh one goes on with
    the next case); a child that dies is a crash."""
    context = mp.get_context("spawn")  # a clean process: no inherited threads or state
    outcomes: list[Outcome] = []
    start, deadline, index = time.perf_counter(), time.time() + seconds, 0
    while index < max_cases and (index < min_cases or time.time() < deadline):
        receive, send = context.Pipe(duplex=False)
        args = (send, target, seed, str(workdir), index, max_cases, deadline, min_cases)
        child = context.Process(target=_child, args=args, daemon=True)
        child.start()
        send.close()  # the child's end: EOF here once the child is gone
        finished = False
        try:
            index, finished = _collect(receive, child, index, outcomes, case_timeout)
        finally:
            child.join(EXIT_GRACE_S if finished else 0)  # done: let it exit cleanly
            if child.is_alive():
                child.kill()
            child.join()
            receive.close()
        if finished:
            break
    return Report(target.__name__, seed, outcomes, time.perf_counter() - start)


def _collect(receive, child, index: int, outcomes: list[Outcome], case_timeout: float):
    """The child's results until it is done (-> next index, True), hangs or dies (False)."""
    timeout = max(case_timeout, READY_S)
    while True:
        if not receive.poll(timeout):
            outcomes.append(Outcome(index, "hang", detail=f"no result after {timeout:g} s"))
            return index + 1, False
        try:
            kind, body = receive.recv()
        except EOFError:
            child.join(5)
            died = f"the fuzzing process died (exit code {child.exitcode})"
            outcomes.append(Outcome(index, "crash", detail=died))
            return index + 1, False
        if kind == "done":
            return index, True
        if kind == "case":
            outcomes.append(body)
            index = body.index + 1
        timeout = case_timeout


def _child(
    send, target: type, seed: int, workdir: str, first: int, stop: int, deadline: float,
    min_cases: int = 0,
):  # fmt: skip
    logging.disable(logging.WARNING)  # every skipped shard and sample is logged: expected here
    warnings.simplefilter("ignore")  # and PIL warns of the corrupt EXIF it was given
    runner = target(Path(workdir))
    send.send(("ready", None))
    for index in range(first, stop):
        if index >= min_cases and time.time() >= deadline:
            break
        try:
            outcome = runner.run(seed, index)
        except Exception as exc:  # a bug of the target's own checks: still this case's crash
            outcome = Outcome(index, "crash", detail=crash_detail(exc))
        send.send(("case", outcome))
    send.send(("done", None))
    send.close()
