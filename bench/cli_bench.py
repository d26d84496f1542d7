"""Start-up time of the commands that neither train nor serve, each beside the 1.5 s target.

Each command runs as `python -m medkfp.cli ...` in a fresh interpreter (the way a user or a
pod starts it) a few times; the median wall time is reported with the heavy packages the
command loaded (none of TensorFlow, Keras or KFP may load). The same interpreter's bare
start-up (`python -c pass`) is measured in the same run, as the floor. Each command's exit
status is recorded: the "(error)" rows and the empty store's `models` rows time the path that
refuses (exit 2); every other row must succeed, or its time would measure the wrong path.

    .venv/bin/python bench/cli_bench.py [--repeats 5] [--json bench-out/cli.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 1.5
HEAVY = ("tensorflow", "keras", "kfp")
PROBE = (
    "import json, sys\n"
    "from medkfp.cli import main\n"
    "try:\n    status = main(sys.argv[1:])\nexcept SystemExit as e:\n    status = e.code\n"
    f"print('LOADED ' + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


# The rows that time a refusal (exit 2): they point at things that do not exist.
REFUSALS = (
    "plan (error)",
    "run (error)",
    "models list (empty store)",
    "models rollback (empty store)",
    "schedule list (no API)",
)


def commands(scratch: Path) -> dict[str, list[str]]:
    """name -> arguments; the REFUSALS point at things that do not exist."""
    store = str(scratch / "store")
    return {
        "--help": ["--help"],
        "synth": [
            "synth",
            "covid19-radiography",
            "--out",
            str(scratch / "synth"),
            "--per-class",
            "5",  # the fewest per class that 20 % test and 20 % val split: plan then plans
            "--size",
            "64",
        ],
        "plan (error)": ["plan", "--dataset", "covid19-radiography", "--source", str(scratch / "missing")],
        "plan": ["plan", "--dataset", "covid19-radiography", "--source", str(scratch / "synth"), "--json"],
        "run (error)": ["run", "--dataset", "covid19-radiography", "--source", str(scratch / "missing")],
        "models list (empty store)": ["models", "list", "--model", "m", "--store", store],
        "models rollback (empty store)": ["models", "rollback", "--model", "m", "--store", store],
        "serving-sync --once": ["serving-sync", "--store", store, "--dir", str(scratch / "mirror"), "--once"],
        "schedule list (no API)": ["schedule", "list", "--host", "http://127.0.0.1:9"],
    }


def timed(argv: list[str]) -> tuple[float, list[str], int]:
    """(wall seconds, heavy packages loaded, exit status) of one fresh interpreter running argv."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    loaded = [line for line in done.stderr.splitlines() if line.startswith("LOADED ")]
    return seconds, json.loads(loaded[-1].removeprefix("LOADED ")) if loaded else [], done.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="bench-out/cli.json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        floor = statistics.median(timed([sys.executable, "-c", "pass"])[0] for _ in range(args.repeats))
        print(f"{'command':<31}{'median s':>10}{'target s':>10}  heavy packages loaded")
        print(f"{'(python -c pass)':<31}{floor:>10.2f}{'':>10}")
        for name, cli_args in commands(scratch).items():
            runs = [timed([sys.executable, "-c", PROBE, *cli_args]) for _ in range(args.repeats)]
            statuses = sorted({status for _, _, status in runs})
            if statuses != [2 if name in REFUSALS else 0]:
                raise RuntimeError(f"{name} exited with {statuses}: its time would not be the path it names")
            seconds = statistics.median(s for s, _, _ in runs)
            loaded = sorted({m for _, found, _ in runs for m in found})
            ok = seconds < TARGET_SECONDS and not loaded
            print(
                f"{name:<31}{seconds:>10.2f}{TARGET_SECONDS:>10.1f}  {', '.join(loaded) or 'none'}"
                f"{'' if ok else '  <-- over'}"
            )
            results[name] = {
                "median_s": round(seconds, 3),
                "heavy_loaded": loaded,
                "exit_status": statuses[0],
                "within_target": ok,
            }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {"target_s": TARGET_SECONDS, "python_start_s": round(floor, 3), "commands": results}, indent=2
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
