"""DICOM: windowing, de-identification, patients as split groups, broken objects, DICOM to the model.

Windowing is done one documented way, de-identification before the store; broken objects are
rejected with reasons, and DICOM goes straight to the served model.

Every DICOM file here is written by the test with pydicom (medkfp.synth.dicom): CR/DX films,
MONOCHROME1 and MONOCHROME2, 12- and 16-bit stored values with rescale and window, RLE
Lossless and JPEG 2000 Lossless, several films per patient, planted names and IDs.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.uid import RLELossless

from medkfp import dicom, vocab
from medkfp.cli import main
from medkfp.components.ingest.layouts import LayoutError
from medkfp.components.ingest.logic import ingest
from medkfp.packs import pack_reader
from medkfp.plan import plan
from medkfp.store import LocalStore
from medkfp.synth import dicom as synth_dicom
from medkfp.synth.dicom import Patient, Storage, film_dataset, to_bytes
from medkfp.tables import read_manifest

SALT = "test-salt-never-stored-7d1e"


def patient(k: int = 0) -> Patient:
    return Patient(
        name=f"Sutanto^Wulandari^{k}",
        patient_id=f"RSH-77{k:04d}",
        birth_date="19610423",
        accession=f"AX9931{k:03d}",
        study_uid=f"1.2.826.0.1.3680043.8.498.4242{k}",
    )


def display(size: int = 32, seed: int = 0) -> np.ndarray:
    """A displayed image in 0..1 with smooth structure and the full range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return np.clip(0.5 + 0.4 * np.sin(6 * x + 3 * y) + 0.05 * rng.standard_normal((size, size)), 0, 1)


def png_pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L" and image.format == "PNG" and not image.info.get("dicom")
    return np.asarray(image, dtype=np.int16)


def convert(ds: pydicom.Dataset) -> np.ndarray:
    return png_pixels(dicom.dicom_to_png(to_bytes(ds)))


def assert_within_rounding(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 1, f"max difference {np.abs(a - b).max()}"


def store_text(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def assert_nowhere(values, *roots: Path, extra: str = "") -> None:
    """None of `values` (any case) in any file under `roots`, nor in `extra`."""
    blobs = [(p, data.lower()) for root in roots for p, data in store_text(root)]
    blobs.append((Path("(output)"), extra.lower().encode()))
    for value in values:
        needle = value.lower().encode()
        leaks = [str(p) for p, data in blobs if needle in data]
        assert not leaks, f"{value!r} found in {leaks[:5]}"


# --- pixels ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, slope, intercept", [(12, 1.0, 0.0), (16, 0.5, -1024.0), (16, 2.0, 100.0)])
def test_monochrome1_and_its_monochrome2_twin_give_the_same_png(bits, slope, intercept):
    shown = display()
    m2 = film_dataset(shown, patient(), Storage("DX", "MONOCHROME2", bits, slope, intercept))
    m1 = film_dataset(shown, patient(), Storage("CR", "MONOCHROME1", bits, slope, intercept))
    stored = np.corrcoef(m1.pixel_array.ravel(), m2.pixel_array.ravel())[0, 1]
    assert stored < -0.99  # white is "no signal" in the MONOCHROME1 film: stored inverted
    assert_within_rounding(convert(m1), convert(m2))
    # and the header's window shows the displayed image again
    assert_within_rounding(convert(m2), np.rint(shown * 255))


def test_window_comes_from_the_header_and_rescale_first():
    """A narrow window in modality (rescaled) units clips what lies outside it."""
    ds = film_dataset(display(), patient(), Storage("DX", "MONOCHROME2", 16, 0.5, -1024.0, "none"))
    values = ds.pixel_array * 0.5 - 1024.0
    center, width = float(np.percentile(values, 50)), float(np.ptp(values) / 4)
    ds.WindowCenter, ds.WindowWidth = f"{center:.2f}", f"{width:.2f}"
    out = convert(ds)
    expected = np.clip(((values - (center - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    assert_within_rounding(out, np.rint(expected))
    assert (out == 0).mean() > 0.2 and (out == 255).mean() > 0.2
    assert dicom.convert(to_bytes(ds)).columns["windowing"] == "window"


def test_voi_lut_sequence_is_used_before_the_window():
    ds = film_dataset(display(), patient(), Storage("CR", "MONOCHROME2", 12, voi="voi_lut"))
    ds.WindowCenter, ds.WindowWidth = "10", "2"  # would make the image almost binary
    image = dicom.convert(to_bytes(ds))
    assert image.columns["windowing"] == "voi_lut"
    out = png_pixels(image.png)
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) > 100


def test_without_a_window_the_fallback_is_min_max_of_the_modality_values():
    ds = film_dataset(display(), patient(), Storage("DX", "MONOCHROME2", 16, 1.0, 0.0, "none"))
    image = dicom.convert(to_bytes(ds))
    assert image.columns["windowing"] == "minmax"
    values = ds.pixel_array.astype(float)
    expected = (values - values.min()) / np.ptp(values) * 255
    assert_within_rounding(png_pixels(image.png), np.rint(expected))


def test_compressed_transfer_syntaxes_decode_to_the_same_png():
    shown = display(seed=3)
    plain = convert(film_dataset(shown, patient(), Storage("DX", "MONOCHROME1", 12)))
    for syntax in (RLELossless, pydicom.uid.JPEG2000Lossless):
        ds = film_dataset(shown, patient(), Storage("DX", "MONOCHROME1", 12, transfer_syntax=syntax))
        data = to_bytes(ds)
        assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(convert(pydicom.dcmread(io.BytesIO(data))), plain)


def test_a_file_without_extension_is_dicom_by_its_preamble(tmp_path):
    data = to_bytes(film_dataset(display(), patient()))
    assert dicom.is_dicom(data, "Normal/IM0001") and dicom.is_dicom(b"no preamble", "x.DCM")
    assert not dicom.is_dicom(b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "x.png")
    (tmp_path / "IM0001").write_bytes(data)
    assert dicom.dicom_to_png(tmp_path / "IM0001") == dicom.dicom_to_png(data)


# --- rejects -----------------------------------------------------------------------------------


def broken_objects() -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected rejection kind): every object an export can hold that is no film."""
    person = patient(9)
    shown = display(32)  # big enough for the truncation to cut the pixel data
    files = {
        name: (data, kind)
        for (name, data), kind in zip(
            synth_dicom.broken_films(person, shown).items(), ("corrupt", "no_pixel_data", "not_image")
        )
    }
    state = film_dataset(shown, person)
    del state.PixelData
    state.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
    files["state.dcm"] = (to_bytes(state), "not_image")
    rgb = film_dataset(shown, person)
    rgb.PhotometricInterpretation, rgb.SamplesPerPixel, rgb.PlanarConfiguration = "RGB", 3, 0
    files["colour.dcm"] = (to_bytes(rgb), "unsupported_photometric")
    frames = film_dataset(shown, person)
    frames.NumberOfFrames = 2
    frames.PixelData = frames.PixelData * 2
    files["frames.dcm"] = (to_bytes(frames), "multi_frame")
    burned = film_dataset(shown, person)
    burned.BurnedInAnnotation = "YES"
    files["burned.dcm"] = (to_bytes(burned), "burned_in_annotation")
    files["header-only.dcm"] = (to_bytes(film_dataset(shown, person))[:300], "corrupt")
    files["not-dicom.dcm"] = (b"this is a text file called .dcm", "not_image")
    return files


def test_every_broken_object_is_rejected_with_a_reason():
    for name, (data, kind) in broken_objects().items():
        with pytest.raises(dicom.DicomRejected) as raised:
            dicom.convert(data, name)
        assert raised.value.kind == kind, (name, raised.value.reason)
        assert raised.value.reason and "\n" not in raised.value.reason
        assert "Sutanto" not in raised.value.reason and "RSH-77" not in raised.value.reason


# --- de-identification and ingest --------------------------------------------------------------


def write_export(root: Path, per_patient=(3, 2, 1, 2, 3, 2, 1, 2), size: int = 24) -> list[Patient]:
    """An imagefolder of DICOM films: patients with several films, planted values also in names."""
    people = [patient(k) for k in range(len(per_patient))]
    instance = 0
    for k, (person, films) in enumerate(zip(people, per_patient)):
        for j in range(films):
            label = ("Normal", "Opacity")[(k + j) % 2]
            storage = synth_dicom.VARIANTS[instance % len(synth_dicom.VARIANTS)]
            ds = film_dataset(display(size, seed=instance), person, storage, instance=instance + 1)
            # Exports often name files after the patient: the name must not survive either.
            name = f"{person.patient_id}_{j}.dcm" if j % 2 == 0 else f"IM{instance:04d}"
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / label / name).write_bytes(to_bytes(ds))
            instance += 1
    for name, (data, _) in broken_objects().items():
        (root / "Normal" / name).write_bytes(data)
    (root / "Normal" / "DICOMDIR").write_bytes(b"index")
    return people


def planted(people: list[Patient]) -> list[str]:
    return sorted({v for p in people for v in p.planted() if len(v) >= 4} | {SALT})


def expected_pseudonym(patient_id: str) -> str:
    digest = hmac.new(SALT.encode(), f"patient:{patient_id}".encode(), hashlib.sha256).hexdigest()
    return "patient-" + digest[:16]


def test_ingest_keeps_no_identifying_value_and_groups_by_patient(tmp_path, monkeypatch):
    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    people = write_export(tmp_path / "ward")
    store = LocalStore(tmp_path / "store")
    summary = ingest(vocab.IMAGEFOLDER, str(tmp_path / "ward"), store.uri, "r1", max_rejected_fraction=0.9)

    counts = summary["counts"]
    broken = broken_objects()
    assert counts["found"] == counts["accepted"] + counts["rejected"] == 16 + len(broken)
    assert counts["rejected"] == len(broken) and summary["ignored_reasons"] == {
        "DICOMDIR, the index of DICOM media": 1
    }
    assert {Path(r["path"]).name: r["kind"] for r in summary["rejects"]} == {
        name: kind for name, (_, kind) in broken.items()
    }
    assert all(r["reason"] for r in summary["rejects"])

    manifest = read_manifest(summary)
    assert set(manifest["format"]) == {dicom.FORMAT} and set(manifest["suffix"]) == {".png"}
    assert set(manifest["patient"]) == {expected_pseudonym(p.patient_id) for p in people}
    assert (manifest["group"] == manifest["patient"]).all()  # the patient is the split group
    assert manifest.groupby("patient").size().max() == 3
    assert set(manifest["windowing"]) == {"window", "voi_lut", "minmax"}
    assert any("[removed]" in p for p in manifest["path"])
    with pack_reader(store, manifest["pack"]) as read:  # the store holds the PNG, with no header at all
        for row in manifest.itertuples():
            stored = read(row.pack, row.offset, row.bytes)
            assert stored.startswith(b"\x89PNG") and b"DICM" not in stored

    dicom_block = summary["dicom"]
    assert dicom_block["patients"] == len(people) and dicom_block["pseudonym_salt"] == dicom.SALT_ENV
    assert_nowhere(planted(people), tmp_path / "store", extra=json.dumps(summary))


def test_plan_puts_no_patient_in_two_splits_and_reports_the_patients(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    people = write_export(tmp_path / "ward", per_patient=(4, 3, 3, 2, 2, 2, 1, 1, 3, 2, 2, 1))
    report = plan(vocab.IMAGEFOLDER, str(tmp_path / "ward"), max_rejected_fraction=0.9)
    assert report["leakage"]["groups_across_splits"] == 0
    patients = report["patients"]
    assert patients["patients"] == len(people) and patients["patients_across_splits"] == 0
    assert patients["images_per_patient"] == {"1": 3, "2": 5, "3": 3, "4": 1}
    assert sum(patients["splits"].values()) == len(people)
    assert all(patients["splits"][s] >= 1 for s in vocab.SPLITS)
    assert report["found"] == report["accepted"] + report["rejected"]

    assert (
        main(
            [
                "plan",
                "--dataset",
                vocab.IMAGEFOLDER,
                "--source",
                str(tmp_path / "ward"),
                "--max-rejected-fraction",
                "0.9",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert json.loads(printed)["patients"] == patients
    assert_nowhere(planted(people), extra=printed)


def write_flat_export(root: Path, by: str) -> dict[str, str]:
    """A flat export (one folder) and its labels table keyed by `by` (path or SOPInstanceUID)."""
    labels = {}
    rows = []
    for k in range(6):
        person = patient(k)
        for j in range(2):
            ds = film_dataset(display(16, seed=k * 2 + j), person, instance=k * 2 + j + 1)
            path = f"export/{k:02d}/{j}.dcm"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(to_bytes(ds))
            label = ("Normal", "Opacity")[k % 2]
            labels[path] = label
            rows.append({"path": "./" + path, "SOPInstanceUID": ds.SOPInstanceUID, "label": label})
    (root / "export" / "README.txt").write_text("export notes")
    (root / "export" / "99").mkdir()
    (root / "export" / "99" / "unlisted.dcm").write_bytes(to_bytes(film_dataset(display(16), patient(7))))
    table = pd.DataFrame(rows)[["path" if by == "path" else "SOPInstanceUID", "label"]]
    table.to_csv(root / "labels.csv", index=False)
    return labels


@pytest.mark.parametrize("by", ["path", "SOPInstanceUID"])
def test_flat_export_with_a_labels_table(tmp_path, by, monkeypatch):
    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    labels = write_flat_export(tmp_path / "pacs", by)
    store = LocalStore(tmp_path / "store")
    summary = ingest(vocab.DICOM, str(tmp_path / "pacs"), store.uri, "r1")
    assert summary["class_names"] == ["Normal", "Opacity"]
    assert summary["counts"] == {"found": 13, "accepted": 12, "rejected": 1, "ignored": 2}
    assert summary["rejects"][0]["kind"] == "unlabelled"
    manifest = read_manifest(summary)
    assert dict(zip(manifest["path"], manifest["label"])) == labels
    assert manifest["patient"].nunique() == 6
    uids = [pydicom.dcmread(tmp_path / "pacs" / p).SOPInstanceUID for p in labels]
    people = [patient(k) for k in range(8)]
    assert_nowhere(uids + planted(people), tmp_path / "store", extra=json.dumps(summary))


def test_flat_export_and_labels_table_in_s3(tmp_path, s3_env, monkeypatch):
    """The export under an s3:// prefix, the labels table as its own s3:// object."""
    from medkfp.store import open_store

    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    labels = write_flat_export(tmp_path / "pacs", "SOPInstanceUID")
    bucket = open_store("s3://medkfp-pacs")
    for path in (tmp_path / "pacs").rglob("*"):
        if path.is_file() and path.name != "labels.csv":
            bucket.put_file(f"exports/ward/{path.relative_to(tmp_path / 'pacs').as_posix()}", path)
    bucket.put_file("tables/labels.csv", tmp_path / "pacs" / "labels.csv")
    summary = ingest(
        vocab.DICOM,
        "s3://medkfp-pacs/exports/ward",
        "s3://medkfp-run",
        "r1",
        labels="s3://medkfp-pacs/tables/labels.csv",
    )
    assert summary["counts"]["accepted"] == len(labels) and summary["counts"]["rejected"] == 1
    assert sorted(read_manifest(summary)["path"]) == sorted(labels)
    assert vocab.default_model_name(vocab.DICOM, "s3://medkfp-pacs/exports/ward") == "ward"


def test_labels_table_problems_are_one_line_errors(tmp_path):
    write_flat_export(tmp_path / "pacs", "path")
    with pytest.raises(LayoutError, match="no labels table missing.csv"):
        ingest(vocab.DICOM, str(tmp_path / "pacs"), str(tmp_path / "s"), "r", labels="missing.csv")
    (tmp_path / "bad.csv").write_text("file_id,diagnosis\n1,Normal\n")
    with pytest.raises(LayoutError, match="needs a path .or SOPInstanceUID. column and a label column"):
        ingest(
            vocab.DICOM, str(tmp_path / "pacs"), str(tmp_path / "s"), "r", labels=str(tmp_path / "bad.csv")
        )
    with pytest.raises(LayoutError, match="--labels needs --dataset dicom"):
        ingest(vocab.IMAGEFOLDER, str(tmp_path / "pacs"), str(tmp_path / "s"), "r", labels="labels.csv")


def test_synth_dicom_writes_a_labelled_export(tmp_path, capsys):
    assert main(["synth", "dicom", "--out", str(tmp_path / "ward"), "--per-class", "6", "--size", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"Normal": 6, "Opacity": 6}
    files = [p for p in (tmp_path / "ward").rglob("*") if p.is_file()]
    assert len(files) == 12 + 3 and any(p.suffix == "" for p in files)
    syntaxes = {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID) for p in files if "broken" not in p.name}
    assert {RLELossless, pydicom.uid.JPEG2000Lossless} <= syntaxes
    assert (
        main(
            [
                "synth",
                "dicom",
                "--out",
                str(tmp_path / "flat"),
                "--per-class",
                "3",
                "--size",
                "16",
                "--layout",
                "flat",
            ]
        )
        == 0
    )
    report = plan(vocab.DICOM, str(tmp_path / "flat"))
    assert (report["accepted"], report["rejected"]) == (6, 3)


# --- serving -------------------------------------------------------------------------------------


def test_predict_on_a_dicom_gives_the_answer_of_its_stored_png(tmp_path, monkeypatch, capsys):
    """`medkfp predict` on DICOM files, against the project's gRPC server, answers exactly as on
    the PNGs ingest stored for them (the served model sees what training saw)."""
    from serving_helpers import export_model

    from medkfp.model_repository import ModelRepository
    from medkfp.serving.server import start_server

    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    films = tmp_path / "films"
    for k, storage in enumerate(synth_dicom.VARIANTS[:3]):
        (films / "x").mkdir(parents=True, exist_ok=True)
        (films / ("x", "y")[k % 2]).mkdir(exist_ok=True)
        ds = film_dataset(display(40, seed=k) ** (k + 1), patient(k), storage, instance=k + 1)
        (films / ("x", "y")[k % 2] / f"{k}.dcm").write_bytes(to_bytes(ds))
    runs = LocalStore(tmp_path / "runs")
    manifest = read_manifest(ingest(vocab.IMAGEFOLDER, str(films), runs.uri, "r1"))
    pngs = []
    with pack_reader(runs, manifest["pack"]) as read:
        for row in manifest.itertuples():
            pngs.append(tmp_path / f"{row.id}.png")
            pngs[-1].write_bytes(read(row.pack, row.offset, row.bytes))
    dcms = [str(films / p) for p in manifest["path"]]

    store = LocalStore(tmp_path / "models")
    ModelRepository(store).publish("m", export_model(tmp_path / "export"), {"class_names": ["a", "b", "c"]})
    with start_server(store.uri, port=0, cache_dir=tmp_path / "cache", poll_interval=60) as server:
        answers = []
        for paths in (dcms, [str(p) for p in pngs]):
            capsys.readouterr()
            address = f"127.0.0.1:{server.port}"
            assert main(["predict", "--server", address, "--model", "m", "--json", *paths]) == 0
            predictions = json.loads(capsys.readouterr().out)["predictions"]
            answers.append([(p["class"], p["probabilities"]) for p in predictions])
    assert answers[0] == answers[1]
    assert len({str(p) for _, p in answers[0]}) == 3  # three different films, three answers

    broken = tmp_path / "report.dcm"
    broken.write_bytes(to_bytes(synth_dicom.structured_report(patient(1))))
    assert main(["predict", "--server", "127.0.0.1:1", "--model", "m", str(broken)]) == 2
    assert "not an image: a Basic Text SR Storage object" in capsys.readouterr().err


# --- the whole run ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_dicom_run_pushes_a_model_and_writes_no_identifying_value(tmp_path, monkeypatch, capfd):
    """`medkfp run` on a DICOM imagefolder with planted names and IDs: a model is pushed, and
    neither the store, the pipeline root (task outputs, KFP artifacts, run.log), the summary nor
    the console holds a planted value or the salt."""
    monkeypatch.setenv(dicom.SALT_ENV, SALT)
    synth_dicom.synth_dicom(tmp_path / "Ward", per_class=24, size=64, seed=5)
    people = synth_dicom.make_patients(30, 5)
    store, root, summary_path = tmp_path / "store", tmp_path / "kfp", tmp_path / "summary.json"
    assert (
        main(
            [
                "run",
                "--dataset",
                vocab.IMAGEFOLDER,
                "--source",
                str(tmp_path / "Ward"),
                "--image-size",
                "32",
                "--epochs",
                "10",
                "--store",
                str(store),
                "--summary",
                str(summary_path),
                "--pipeline-root",
                str(root),
            ]
        )
        == 0
    )
    summary = json.loads(summary_path.read_text())
    assert summary["pushed"]["model_name"] == "ward" and summary["pushed"]["version"] == 1
    counts = summary["counts"]
    assert (counts["found"], counts["accepted"], counts["rejected"]) == (51, 48, 3)
    card = (store / vocab.model_version_key("ward", 1, vocab.MODEL_CARD_FILE)).read_text()
    assert "Windowing: 48 DICOM image(s)" in card and "MONOCHROME1 inverted" in card
    run_output = capfd.readouterr()
    # external validation goes through the same ingest: the same PNGs, the same rejects
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(store / vocab.model_version_key("ward", 1)),
                "--source",
                str(tmp_path / "Ward"),
                "--json",
            ]
        )
        == 0
    )
    output = capfd.readouterr()
    external = json.loads(output.out)
    assert (external["counts"]["accepted"], external["counts"]["rejected"]) == (48, 3)
    printed = run_output.out + run_output.err + output.out + output.err
    assert_nowhere(planted(people), store, root, extra=summary_path.read_text() + printed)
