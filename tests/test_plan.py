"""`medkfp plan`: the dry run's JSON on MIAS, on COVID-19 and on a folder with broken files mixed in.

MIAS has a hand-written Info.txt, pairs and severity; COVID-19 the Table II totals and balancing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medkfp import vocab
from medkfp.cli import main
from medkfp.components.ingest.layouts import parse_info, scan_source
from medkfp.components.ingest.logic import ingest
from medkfp.components.preprocess.logic import preprocess
from medkfp.plan import plan
from medkfp.synth import synth_covid, synth_mias, write_broken_files

# Rows in the exact shape of the real Info.txt: a header with a trailing blank, NORM rows
# ending after the class with a trailing blank, two rows for one film (mdb005, mdb223),
# calcifications with a severity but no centre (mdb238), blank lines, CRLF line ends.
HAND_WRITTEN_INFO = (
    "REFNUM BG CLASS SEVERITY X Y RADIUS \r\n"
    "mdb001 G CIRC B 535 425 197\r\n"
    "mdb002 G CIRC B 522 280 69\r\n"
    "mdb003 D NORM \r\n"
    "mdb004 D NORM \r\n"
    "mdb005 F CIRC B 477 133 30\r\n"
    "mdb005 F CIRC B 500 168 26\r\n"
    "mdb006 F NORM \r\n"
    "\r\n"
    "mdb223 D CALC B 523 482 29\r\n"
    "mdb223 D CALC B 591 529 6\r\n"
    "mdb224 D NORM \r\n"
    "mdb237 F NORM  \r\n"
    "mdb238 F CALC M\r\n"
    "mdb239 D CALC M 567 808 25\r\n"
    "mdb240 D SPIC M 643 614 23\r\n"
    "   \r\n"
)


def run_plan(capsys, *args: str) -> tuple[int, dict | None, str]:
    """`medkfp plan ... --json`: (exit status, the JSON report, stderr)."""
    status = main(["plan", *args, "--json"])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if captured.out.strip() else None, captured.err


def assert_counts_add_up(report: dict) -> None:
    assert (
        report["found"]
        == report["accepted"] + report["rejected"]
        == (sum(report["classes"].values()) + len(report["rejects"]))
    )


# --- MIAS -----------------------------------------------------------------------------------


def test_hand_written_info_txt_parses_fully(tmp_path):
    rows, problems = parse_info(HAND_WRITTEN_INFO)
    assert problems == []
    assert len(rows) == 14
    assert [r.ref for r in rows if r.ref == "mdb005"] == ["mdb005", "mdb005"]
    calc = next(r for r in rows if r.ref == "mdb238")
    assert (calc.abnormality, calc.severity, calc.x, calc.y, calc.radius) == ("CALC", "M", None, None, None)
    assert next(r for r in rows if r.ref == "mdb001").radius == 197

    folder = tmp_path / "MIAS" / vocab.MIAS_DIR
    folder.mkdir(parents=True)
    (tmp_path / "MIAS" / vocab.MIAS_INFO_FILE).write_bytes(HAND_WRITTEN_INFO.encode())  # beside all-mias/
    for ref in sorted({r.ref for r in rows}):
        Image.fromarray(np.full((32, 32), int(ref[3:]) % 256, np.uint8)).save(folder / f"{ref}.pgm")
    scan = scan_source(vocab.MIAS, tmp_path / "MIAS")
    films = {item.path.rsplit("/", 1)[-1]: item for item in scan.files}
    assert len(films) == 12 and scan.unlabelled == [] and scan.notes == []
    assert films["mdb005.pgm"].meta == {
        "abnormality": "CIRC",
        "tissue": "F",
        "severity": "benign",
        "lesions": 2,
    }
    assert films["mdb238.pgm"].meta == {
        "abnormality": "CALC",
        "tissue": "F",
        "severity": "malignant",
        "lesions": 0,
    }
    assert films["mdb003.pgm"].meta["severity"] == "normal"
    assert films["mdb237.pgm"].group == films["mdb238.pgm"].group == "mias-pair-119"
    assert films["mdb001.pgm"].group == films["mdb002.pgm"].group != films["mdb003.pgm"].group
    severity = scan_source(vocab.MIAS, tmp_path / "MIAS", label="severity")
    assert {i.label for i in severity.files} == set(vocab.SEVERITY_CLASSES)


def test_unusable_info_rows_and_unlisted_films_are_reported(tmp_path):
    folder = tmp_path / vocab.MIAS_DIR
    folder.mkdir()
    (folder / vocab.MIAS_INFO_FILE).write_text(
        "REFNUM BG CLASS SEVERITY X Y RADIUS\nmdb001 G CIRC B 535 425 197\nmdb002 X NORM\n"
        "mdb003 G TUMOR B\nmdb009 F NORM\nsome remark\n"
    )
    for ref in ("mdb001", "mdb002", "mdb003"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / f"{ref}.pgm")
    (folder / "README").write_text("the database's readme")
    (folder / "scan.png").write_bytes(b"")
    scan = scan_source(vocab.MIAS, tmp_path)
    assert [i.path for i in scan.files] == [f"{vocab.MIAS_DIR}/mdb001.pgm"]
    assert dict(scan.unlabelled) == {
        f"{vocab.MIAS_DIR}/mdb002.pgm": "no usable Info.txt row for mdb002",
        f"{vocab.MIAS_DIR}/mdb003.pgm": "no usable Info.txt row for mdb003",
        f"{vocab.MIAS_DIR}/scan.png": "not a MIAS film name (mdbNNN.pgm)",
    }
    assert dict(scan.ignored)[f"{vocab.MIAS_DIR}/README"] == "documentation"
    assert len(scan.notes) == 4
    assert "unknown background tissue 'X'" in scan.notes[0] and "unknown class 'TUMOR'" in scan.notes[1]
    assert "not a film row" in scan.notes[2]
    assert scan.notes[3] == "Info.txt lists 1 film(s) with no file: mdb009"


def test_plan_on_mias_reports_seven_classes_pairs_and_severity(tmp_path, capsys):
    synth_mias(tmp_path / "mias", size=32)
    status, report, _ = run_plan(capsys, "--dataset", "mias", "--source", str(tmp_path / "mias"))
    assert status == 0
    assert report["classes"] == {c: n for c, n in zip(vocab.MIAS_CLASSES, (19, 15, 25, 23, 14, 207, 19))}
    assert report["leakage"]["groups_across_splits"] == 0
    assert report["leakage"]["groups"] == 161  # every left/right pair
    assert set(report["severity"]) == set(vocab.SEVERITY_CLASSES)
    assert report["severity"]["normal"] == 207 and sum(report["severity"].values()) == 322
    assert_counts_add_up(report)
    assert report["problems"] == []
    assert all(all(n > 0 for n in report["splits"][s].values()) for s in vocab.SPLITS)

    status, severity, _ = run_plan(
        capsys,
        "--dataset",
        "mias",
        "--source",
        str(tmp_path / "mias"),
        "--label",
        "severity",
        "--test-fraction",
        "0.3",
    )
    assert status == 0 and list(severity["classes"]) == list(vocab.SEVERITY_CLASSES)
    assert severity["classes"] == report["severity"]
    assert severity["leakage"]["groups_across_splits"] == 0


# --- COVID-19 ----------------------------------------------------------------------------------


def test_plan_balancing_and_split_match_what_the_run_does(tmp_path, capsys):
    synth_covid(tmp_path / "covid", counts=[36, 60, 102, 13], size=16)
    status, report, _ = run_plan(
        capsys, "--dataset", vocab.COVID, "--source", str(tmp_path / "covid"), "--seed", "3"
    )
    assert status == 0
    train = report["splits"]["train"]
    balanced = report["balanced_train"]
    assert balanced["none"] == balanced["class_weight"] == train
    assert sum(balanced["undersample"].values()) == 4 * min(train.values())
    assert sum(balanced["oversample"].values()) == 4 * max(train.values())
    assert set(balanced["undersample"].values()) == {min(train.values())}
    assert report["class_weights"]["Viral Pneumonia"] == max(report["class_weights"].values())
    assert report["ignored"] == 211 + 5  # every mask, the README and four .xlsx files
    # the run's preprocess step puts exactly the planned images in each split
    ingested = ingest(vocab.COVID, str(tmp_path / "covid"), str(tmp_path / "store"), "r")
    dataset = preprocess(ingested, 16, seed=3)
    assert {s: dataset["splits"][s]["class_counts"] for s in vocab.SPLITS} == report["splits"]


@pytest.mark.integration
def test_plan_reproduces_table_ii_on_the_study_counts(tmp_path, capsys):
    synth_covid(tmp_path / "covid", counts=[3616, 6012, 10192, 1345], size=32)
    status, report, _ = run_plan(capsys, "--dataset", vocab.COVID, "--source", str(tmp_path / "covid"))
    assert status == 0
    assert report["found"] == report["accepted"] == 21165
    assert report["split_totals"] == {"train": 13545, "val": 3387, "test": 4233}
    train = report["splits"]["train"]
    assert sum(report["balanced_train"]["undersample"].values()) == 4 * min(train.values())
    assert sum(report["balanced_train"]["oversample"].values()) == 4 * max(train.values())
    assert report["leakage"] == {
        "groups_across_splits": 0,
        "duplicate_files": 0,
        "duplicate_sets": 0,
        "groups": 0,
    }


# --- broken files ---------------------------------------------------------------------------------


def test_plan_lists_every_broken_file_and_the_counts_add_up(shapes_folder, capsys):
    expected = write_broken_files(shapes_folder / "stripes")
    status, report, _ = run_plan(capsys, "--dataset", "imagefolder", "--source", str(shapes_folder))
    assert status == 0
    assert_counts_add_up(report)
    assert report["accepted"] == 36 and report["rejected"] == len(expected)
    kinds = {r["path"]: r["kind"] for r in report["rejects"]}
    assert kinds == {f"stripes/{name}": kind for name, kind in expected.items()}
    assert all(r["reason"] for r in report["rejects"])

    # the readable report lists them too
    assert main(["plan", "--dataset", "imagefolder", "--source", str(shapes_folder)]) == 0
    text = capsys.readouterr().out
    assert "found 53, accepted 36, rejected 17" in text
    assert "stripes/animated.gif" in text and "unsupported: 2 frames" in text


def test_plan_fails_over_the_rejected_fraction_after_reporting(shapes_folder, capsys):
    write_broken_files(shapes_folder / "stripes")
    status, report, err = run_plan(
        capsys, "--dataset", "imagefolder", "--source", str(shapes_folder), "--max-rejected-fraction", "0.25"
    )
    assert status == 2
    assert report["problems"] and report["rejected"] == 17
    [line] = err.strip().splitlines()
    assert line.startswith("medkfp: error: 17 of 53 files") and "--max-rejected-fraction 0.25" in line


def test_plan_user_errors_are_one_line(tmp_path, capsys):
    assert main(["plan", "--dataset", "mias", "--source", str(tmp_path / "missing")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("medkfp: error: source") and "does not exist" in line
    assert main(["run", "--dataset", "imagefolder", "--source", str(tmp_path), "--label", "severity"]) == 2
    assert "--label severity needs --dataset mias" in capsys.readouterr().err


def test_plan_library_call_matches_the_cli(tmp_path):
    synth_mias(tmp_path / "mias", per_class=6, size=16)
    report = plan(vocab.MIAS, str(tmp_path / "mias"), test_fraction=0.25, seed=1)
    assert report["leakage"]["groups_across_splits"] == 0
    assert sum(report["split_totals"].values()) == report["accepted"] == 42
