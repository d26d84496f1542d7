"""Commands that neither train nor serve, and every error message, load neither TensorFlow nor KFP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medkfp.s3server import free_port
from medkfp.synth import synth_covid

HEAVY = ("tensorflow", "keras", "kfp")
# Runs one command in a fresh interpreter, then reports which heavy packages it loaded.
PROBE = (
    "import json, sys\n"
    "from medkfp.cli import main\n"
    "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as e:\n    status = e.code\n"
    f"print('LOADED ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    "sys.exit(status)\n"
)


def run_cli(*args: str) -> tuple[int, list[str], str]:
    """(exit status, heavy packages loaded, stderr) of `medkfp ARGS` in a new process."""
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    loaded = next(line for line in done.stdout.splitlines() if line.startswith("LOADED "))
    return done.returncode, json.loads(loaded.removeprefix("LOADED ")), done.stderr


def assert_one_error_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medkfp: error: "), stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    synth_covid(out, per_class=6, size=32, seed=0)
    return out


def test_help_and_synth_are_light(tmp_path):
    assert run_cli("--help")[:2] == (0, [])
    status, loaded, stderr = run_cli(
        "synth", "covid19-radiography", "--out", str(tmp_path / "s"), "--per-class", "2", "--size", "16"
    )
    assert (status, loaded, stderr) == (0, [], "")


def test_plan_is_light(dataset):
    status, loaded, _ = run_cli(
        "plan", "--dataset", "covid19-radiography", "--source", str(dataset), "--json"
    )
    assert (status, loaded) == (0, [])


@pytest.mark.parametrize(
    "args",
    [
        ("plan", "--dataset", "covid19-radiography", "--source", "/nonexistent"),
        ("run", "--dataset", "covid19-radiography", "--source", "/nonexistent"),
        ("run", "--dataset", "imagefolder", "--source", ".", "--label", "severity"),
    ],
    ids=["plan", "run", "run-label"],
)
def test_errors_are_one_line_and_light(args):
    status, loaded, stderr = run_cli(*args)
    assert (status, loaded) == (2, [])
    assert_one_error_line(stderr)


def test_model_repository_commands_are_light(tmp_path):
    store = str(tmp_path / "store")
    for args in (
        ("models", "list", "--model", "m", "--store", store),
        ("models", "rollback", "--model", "m", "--store", store),
    ):
        status, loaded, stderr = run_cli(*args)
        assert (status, loaded) == (2, []), args
        assert_one_error_line(stderr)
    status, loaded, stderr = run_cli(
        "serving-sync", "--store", store, "--dir", str(tmp_path / "mirror"), "--once"
    )
    assert (status, loaded) == (0, []), stderr


def test_schedule_errors_are_light():
    """No KFP API server can run here: a closed port stands in for an unreachable one."""
    status, loaded, stderr = run_cli("schedule", "list", "--host", f"http://127.0.0.1:{free_port()}")
    assert (status, loaded) == (2, [])
    assert_one_error_line(stderr)


def test_a_bug_is_one_line_and_keeps_its_traceback_under_verbose(monkeypatch, tmp_path, capsys):
    """A genuine bug (here a KeyError planted in synth) is not dressed up as the user's error."""
    from medkfp import synth
    from medkfp.cli import main

    def broken(*args, **kwargs):
        raise KeyError("planted")

    monkeypatch.setattr(synth, "synth_covid", broken)
    args = ["synth", "covid19-radiography", "--out", str(tmp_path / "s"), "--per-class", "1"]
    assert main(args) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("medkfp: internal error: KeyError: 'planted'") and "-v" in line
    with pytest.raises(KeyError, match="planted"):
        main(["-v", *args])
