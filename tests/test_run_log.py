"""A local run's terminal output: one line per task start and end, candidates told apart by thread."""

from __future__ import annotations

import contextlib
import io
import logging
import threading

from kfp.local.logging_utils import local_logger_context

from medkfp.artifacts import CANDIDATE_MARKER
from medkfp.pipelines.run_log import StepLog, root_logging_to

# kfp.local's own lines, colour codes included, as it prints them.
STARTED = "19:14:01.670 - INFO - Executing task \x1b[96m'{}'\x1b[0m\n"
FINISHED = "19:14:16.446 - INFO - Task \x1b[96m'{}'\x1b[0m finished with status \x1b[92m{}\x1b[0m\n"


def run_task(log: StepLog, name: str, candidate: str | None, status: str, output: str = "") -> None:
    log.write(STARTED.format(name))
    log.write("19:14:01.671 - INFO - Streamed logs:\n\n")
    if candidate:
        log.write(f"    {CANDIDATE_MARKER}{candidate}\n")
    log.write(output)
    log.write(FINISHED.format(name, status))


def test_one_line_per_start_and_end_with_the_candidate_of_each_parallel_task(tmp_path):
    terminal = io.StringIO()
    log = StepLog(tmp_path / "run.log", echo=terminal)
    run_task(log, "ingest", None, "SUCCESS", "    lots of step output\n")
    threads = [
        threading.Thread(target=run_task, args=(log, "train", name, "SUCCESS", "    Epoch 1/3\n"))
        for name in ("simple-cnn-none", "simple-cnn-undersample", "simple-cnn-oversample")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()

    lines = terminal.getvalue().splitlines()
    assert len(lines) == 8 and all(len(line) <= 80 for line in lines)
    assert lines[0].split() == ["started", "ingest"]
    assert lines[1].split()[:3] == ["done", "ingest", "SUCCESS"]
    finished = sorted(line.split()[2] for line in lines if line.split()[:2] == ["done", "train"])
    assert finished == ["simple-cnn-none", "simple-cnn-oversample", "simple-cnn-undersample"]
    assert not any("\x1b" in line or "Epoch" in line or "INFO" in line for line in lines)
    assert "lots of step output" in (tmp_path / "run.log").read_text()  # everything stays in the log


def test_a_failed_task_shows_its_last_error_lines_and_the_log(tmp_path):
    terminal = io.StringIO()
    log = StepLog(tmp_path / "run.log", echo=terminal)
    error = (
        "    Traceback (most recent call last):\n"
        "    ValueError: 8 of 8 files rejected: use a folder of images\n"
    )
    run_task(log, "ingest", None, "FAILURE", error)
    log.close()

    shown = terminal.getvalue()
    assert "FAILED    ingest" in shown and "FAILURE" in shown
    assert "| ValueError: 8 of 8 files rejected" in shown
    assert f"full log: {tmp_path / 'run.log'}" in shown
    assert log.last_error == "ValueError: 8 of 8 files rejected: use a folder of images"


def test_a_line_written_in_chunks_is_read_whole(tmp_path):
    """Container logs stream in chunks that end mid-line; the error line still counts whole."""
    log = StepLog(tmp_path / "run.log", echo=io.StringIO())
    for chunk in (
        "Executing task 'ingest'\n",
        "Traceback ...\nmedkfp.errors.InvalidInp",
        "utError",
        ": 8 of 8 ",
    ):
        log.write(chunk)
    log.write("files were rejected\n")
    log.close()
    assert log.last_error == "InvalidInputError: 8 of 8 files were rejected"


def test_parallel_tasks_swapping_the_root_handlers_keep_their_lines_in_the_run_log(tmp_path):
    """kfp.local's own logger context, entered and left as two parallel tasks do (A in, B in,
    A out, B logs): B's line goes to the run log, never to the handler of before the run,
    and is not dropped by the level of before the run either."""
    terminal = io.StringIO()
    before = logging.StreamHandler(terminal)
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = [before]
    root.setLevel(logging.WARNING)
    try:
        log = StepLog(tmp_path / "run.log", echo=io.StringIO())
        with contextlib.redirect_stdout(log), root_logging_to(log):
            task_a, task_b = local_logger_context(), local_logger_context()
            task_a.__enter__()
            task_b.__enter__()
            task_a.__exit__(None, None, None)
            logging.getLogger().info("Task 'train' finished with status SUCCESS")
            task_b.__exit__(None, None, None)
        assert root.handlers == [before] and root.level == logging.WARNING  # put back as found
        log.close()
    finally:
        root.handlers = saved
        root.setLevel(level)
    assert terminal.getvalue() == ""
    assert "Task 'train' finished with status SUCCESS" in (tmp_path / "run.log").read_text()
