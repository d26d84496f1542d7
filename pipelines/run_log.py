"""A local run's output: kfp.local's verbose log to a file, one readable line per task to the terminal.

kfp.local prints its own log lines (timestamps, colour codes, artifact dumps) and every
step's output to stdout. The run redirects stdout here: everything goes to run.log, and
the terminal gets one line when a task starts and one when it ends, with the candidate it
works on, its status and seconds; a failed task adds its last error lines and the log path.

Parallel tasks of a ParallelFor share a name ("train"), so lines are attributed by thread:
kfp.local runs each task, and prints its output, on one thread of its own.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from medkfp.artifacts import CANDIDATE_MARKER

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([\w-]+)'")
FINISHED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")
CANDIDATE = re.compile(re.escape(CANDIDATE_MARKER) + r"(\S+)")
# Tasks that work on one candidate: their start line waits for the candidate's name.
PER_CANDIDATE = frozenset({"balance", "train", "evaluate"})
ERROR_LINES_SHOWN = 5


@dataclass
class TaskState:
    name: str
    started: float = field(default_factory=time.monotonic)
    candidate: str = ""
    announced: bool = False
    tail: deque = field(default_factory=lambda: deque(maxlen=40))


class StepLog:
    """A file-like stdout for a kfp.local run: writes everything to `path`, echoes task lines.

    `last_error` keeps the last "SomeError: message" line seen, for the run's error message.
    """

    def __init__(self, path: Path, echo=None):
        self.file = open(path, "w")
        self.echo = echo or sys.stderr  # looked up now: sys.stderr may be swapped after import
        self.last_error: str | None = None
        self._tasks: dict[int, TaskState] = {}
        self._partial: dict[int, str] = {}  # thread -> the start of a line not yet ended
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self.file.closed:  # a kfp.local logging handler can outlive the run
                return len(text)
            self.file.write(text)
            # A write may end mid-line (container logs stream in chunks): the rest of the line
            # waits for the next write from the same thread.
            thread = threading.get_ident()
            *lines, self._partial[thread] = (self._partial.pop(thread, "") + ANSI.sub("", text)).split("\n")
            for line in lines:
                self._line(line, thread)
        return len(text)

    def _line(self, line: str, thread: int) -> None:
        started, finished = STARTED.search(line), FINISHED.search(line)
        task = self._tasks.get(thread)
        if started:
            task = self._tasks[thread] = TaskState(started.group(1))
            if task.name not in PER_CANDIDATE:
                self._announce(task)
            return
        if task is None:
            return
        if finished:
            self._finish(task, finished.group(2))
            del self._tasks[thread]
            return
        task.tail.append(line.strip())
        match = ERROR_LINE.match(line)
        if match:
            self.last_error = f"{match.group(1)}: {match.group(2)}"
        candidate = CANDIDATE.search(line)
        if candidate and not task.announced:
            task.candidate = candidate.group(1)
            self._announce(task)

    def _announce(self, task: TaskState) -> None:
        task.announced = True
        self._echo(f"  started   {task.name:<16} {task.candidate}")

    def _finish(self, task: TaskState, status: str) -> None:
        seconds = time.monotonic() - task.started
        word = "done" if status == "SUCCESS" else "FAILED"
        self._echo(f"  {word:<9} {task.name:<16} {task.candidate:<28} {status:<8} {seconds:6.1f} s")
        if status != "SUCCESS":
            shown = [line for line in task.tail if line][-ERROR_LINES_SHOWN:]
            for line in shown:
                self._echo(f"      | {line}")
            self._echo(f"      full log: {self.file.name}")

    def _echo(self, line: str) -> None:
        self.echo.write(line.rstrip() + "\n")
        self.echo.flush()

    def flush(self) -> None:
        if not self.file.closed:
            self.file.flush()

    def close(self) -> None:
        with self._lock:
            for thread, line in self._partial.items():
                if line:
                    self._line(line, thread)
            self._partial.clear()
            self.file.close()


@contextlib.contextmanager
def root_logging_to(stream):
    """Send the root logger's records to `stream` while the run lasts; put its handlers back after.

    kfp.local swaps the root logger's handlers around every task and puts back the ones it
    found. The tasks of a ParallelFor do that from several threads at once, so one task can
    put back the handlers of before the run while another still logs: its "finished" line and
    artifact dump then reached the terminal. With only a handler on `stream` to find, every
    interleaving keeps them in the run log. The level is INFO throughout for the same reason
    (kfp.local puts back the level it found too), so no task's start or end line is dropped.
    """
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = [logging.StreamHandler(stream)]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved
        root.setLevel(level)
