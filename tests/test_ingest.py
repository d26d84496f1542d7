"""Ingest: dataset layouts, decode checks, the one image normalization, duplicates, rejected fraction.

The decode checks run on a corpus of broken files; the rejected fraction has a limit."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from medkfp import vocab
from medkfp.components.ingest.layouts import LayoutError, scan_source
from medkfp.components.ingest.logic import ingest
from medkfp.image_files import check_image, to_decodable
from medkfp.imaging import decode_and_resize
from medkfp.packs import pack_reader
from medkfp.synth import synth_covid, write_broken_files
from medkfp.tables import read_manifest

RUN = "test-run"


@pytest.fixture
def covid_folder(tmp_path):
    synth_covid(tmp_path / "covid", per_class=6, size=48, seed=3)
    return tmp_path / "covid"


def png_bytes(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    (Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)).save(out, fmt)
    return out.getvalue()


def reasons_by_path(summary: dict) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in summary["rejects"]}


def assert_nothing_lost(summary: dict) -> None:
    """found = accepted + rejected, and every reject is listed with a reason."""
    counts = summary["counts"]
    assert counts["found"] == counts["accepted"] + counts["rejected"]
    assert len(summary["rejects"]) == counts["rejected"]
    assert all(r["reason"] for r in summary["rejects"])


# --- layouts -------------------------------------------------------------------------------


def test_ingest_covid_layout_uploads_every_accepted_image(covid_folder, local_store):
    summary = ingest(vocab.COVID, str(covid_folder), local_store.uri, RUN)
    counts = summary["counts"]
    assert counts == {"found": 24, "accepted": 24, "rejected": 0, "ignored": counts["ignored"]}
    assert counts["ignored"] >= 24  # the masks, never counted as images
    assert summary["class_names"] == list(vocab.COVID_CLASSES)
    assert summary["class_counts"] == {c: 6 for c in vocab.COVID_CLASSES}
    manifest = read_manifest(summary)
    assert set(manifest["label"]) == set(vocab.COVID_CLASSES)
    assert manifest["path"].str.contains("/images/").all()
    with pack_reader(local_store, manifest["pack"]) as read:  # each image is in its pack, intact
        for row in manifest.itertuples():
            assert hashlib.sha256(read(row.pack, row.offset, row.bytes)).hexdigest() == row.sha256


def test_covid_flat_layout_and_ignored_files(tmp_path, covid_folder):
    """The older download: PNGs directly in <Class>/; README and spreadsheets ignored."""
    root = covid_folder / vocab.COVID_ROOT
    for name in vocab.COVID_CLASSES:
        for path in (root / name / "images").iterdir():
            path.rename(root / name / path.name)
        (root / name / "images").rmdir()
    scan = scan_source(vocab.COVID, covid_folder)
    assert scan.root == vocab.COVID_ROOT
    assert len(scan.files) == 24 and {i.label for i in scan.files} == set(vocab.COVID_CLASSES)
    ignored = dict(scan.ignored)
    assert ignored[f"{vocab.COVID_ROOT}/README.md.txt"].startswith("not inside a class folder")
    assert ignored[f"{vocab.COVID_ROOT}/COVID.metadata.xlsx"].startswith("not inside a class folder")
    assert ignored[f"{vocab.COVID_ROOT}/COVID/masks/COVID-1.png"].startswith("lung mask")
    # the class folders themselves as the source work too
    assert len(scan_source(vocab.COVID, root).files) == 24


def test_ingest_rejects_broken_files_with_reasons_and_counts_add_up(shapes_folder, local_store):
    (shapes_folder / "plain" / "empty.png").write_bytes(b"")
    (shapes_folder / "plain" / "truncated.png").write_bytes(
        (shapes_folder / "plain" / "plain-0.png").read_bytes()[:60]
    )
    (shapes_folder / "stripes" / "notes.txt").write_text("not an image")
    (shapes_folder / "stray.png").write_bytes((shapes_folder / "plain" / "plain-1.png").read_bytes())
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN)
    counts = summary["counts"]
    assert counts["found"] == counts["accepted"] + counts["rejected"]
    assert counts["accepted"] == 36 and counts["rejected"] == 4
    reasons = reasons_by_path(summary)
    assert reasons["plain/empty.png"].startswith("empty file")
    assert reasons["plain/truncated.png"].startswith("truncated or corrupt")
    assert reasons["stripes/notes.txt"].startswith("not an image")
    assert reasons["stray.png"] == "not inside a class folder"
    stored = pd.read_csv(local_store.uri_for(summary["rejects_key"]))
    assert len(stored) == 4


def test_ingest_wrong_layout_is_one_clear_error(shapes_folder, local_store):
    with pytest.raises(LayoutError, match="not the COVID-19 Radiography Database layout.*missing"):
        ingest(vocab.COVID, str(shapes_folder), local_store.uri, RUN)
    with pytest.raises(LayoutError, match="is not a folder"):
        ingest(vocab.IMAGEFOLDER, str(shapes_folder / "nope"), local_store.uri, RUN)
    with pytest.raises(LayoutError, match="not the mini-MIAS layout: no Info.txt"):
        ingest(vocab.MIAS, str(shapes_folder), local_store.uri, RUN)
    with pytest.raises(LayoutError, match="--label severity needs --dataset mias"):
        ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN, label="severity")


def test_imagefolder_looks_through_one_wrapper_folder_and_skips_hidden_files(tmp_path, shapes_folder):
    wrapper = tmp_path / "download"
    wrapper.mkdir()
    shapes_folder.rename(wrapper / "shapes")
    (wrapper / "shapes" / "plain" / ".DS_Store").write_bytes(b"\x00\x00")
    scan = scan_source(vocab.IMAGEFOLDER, wrapper)
    assert scan.root == "shapes" and scan.class_names == ["circles", "plain", "stripes"]
    assert len(scan.files) == 36
    assert dict(scan.ignored) == {"shapes/plain/.DS_Store": "hidden or system file"}


# --- the corpus of broken files -------------------------------------------------------------------


def test_every_kind_of_broken_file_is_rejected_with_its_reason(shapes_folder, local_store):
    expected = write_broken_files(shapes_folder / "plain")
    (shapes_folder / "plain" / "dangling.png").symlink_to(shapes_folder / "gone.png")
    (shapes_folder / "plain" / "loop.png").symlink_to(shapes_folder / "plain" / "loop.png")
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN)

    assert len(expected) >= 15
    assert_nothing_lost(summary)
    assert summary["counts"]["accepted"] == 36  # the run goes on with every good image
    kinds = {r["path"].split("/", 1)[1]: r["kind"] for r in summary["rejects"]}
    assert kinds == {**expected, "dangling.png": "unreadable", "loop.png": "unreadable"}
    reasons = reasons_by_path(summary)
    assert reasons["plain/dangling.png"].startswith("unreadable (No such file")
    assert reasons["plain/bomb.png"].startswith("over the pixel limit")
    assert reasons["plain/cmyk.jpg"] == "unsupported mode CMYK (convert to grayscale or RGB)"
    assert reasons["plain/animated.gif"].startswith("unsupported: 2 frames")
    assert reasons["plain/download-page.jpg"] == "not an image (looks like an HTML page)"
    assert summary["reject_kinds"]["corrupt"] == sum(k == "corrupt" for k in expected.values())
    stored = pd.read_csv(local_store.uri_for(summary["rejects_key"]))
    assert sorted(stored["path"]) == sorted(reasons)


def test_pixel_limit_is_configurable(shapes_folder, local_store):
    (shapes_folder / "plain" / "large.png").write_bytes(png_bytes(np.zeros((40, 33), np.uint8)))
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN, max_pixels=32 * 32)
    assert summary["rejects"] == [
        {
            "path": "plain/large.png",
            "reason": "over the pixel limit (33 x 40, limit 1024 pixels)",
            "kind": "too_many_pixels",
        }
    ]


def test_too_many_rejects_fail_with_one_line(shapes_folder, local_store):
    write_broken_files(shapes_folder / "plain")  # 17 of 53 files
    with pytest.raises(ValueError) as failure:
        ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN, max_rejected_fraction=0.2)
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(
        f"17 of 53 files in {shapes_folder} were rejected (32.1%), over --max-rejected-fraction 0.2"
    )
    assert "medkfp plan" in message and "rejects.csv" in message
    # the list is written before failing, so the message's pointer is real
    assert len(pd.read_csv(local_store.uri_for(vocab.run_key(RUN, "ingest", "rejects.csv")))) == 17


def test_a_class_without_any_usable_image_is_one_clear_error(shapes_folder, local_store):
    for path in (shapes_folder / "stripes").iterdir():
        path.write_bytes(b"")
    with pytest.raises(ValueError, match="no usable image for class.*stripes"):
        ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN, max_rejected_fraction=1.0)


# --- duplicates ------------------------------------------------------------------------------------


def test_identical_files_are_reported_and_share_a_group(shapes_folder, local_store):
    copy = (shapes_folder / "circles" / "circles-0.png").read_bytes()
    (shapes_folder / "circles" / "copy-of-0.png").write_bytes(copy)
    (shapes_folder / "plain" / "mislabelled.png").write_bytes(copy)
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN)
    assert summary["counts"]["accepted"] == 38  # duplicates are kept, not rejected
    [duplicate] = summary["duplicates"]
    assert sorted(duplicate["paths"]) == [
        "circles/circles-0.png",
        "circles/copy-of-0.png",
        "plain/mislabelled.png",
    ]
    assert duplicate["labels"] == ["circles", "plain"]
    manifest = read_manifest(summary).set_index("path")
    groups = set(manifest.loc[duplicate["paths"], "group"])
    assert groups == {f"dup-{duplicate['sha256'][:16]}"}
    assert manifest["group"].nunique() == 36  # everything else is its own group


# --- normalization -----------------------------------------------------------------------------------


GRAY = (np.arange(32 * 32).reshape(32, 32) * 7 % 256).astype(np.uint8)
RGB = np.stack([GRAY, 255 - GRAY, GRAY // 2], axis=-1)


def decoded(data: bytes) -> np.ndarray:
    """What preprocessing stores (before the resize, which is the identity at 32 px)."""
    return decode_and_resize(tf.constant(to_decodable(data)), 32).numpy()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "PPM", "TIFF", "GIF"])
def test_8bit_grayscale_becomes_three_equal_channels_in_every_format(fmt):
    data = png_bytes(GRAY, fmt=fmt)
    assert check_image(data) == (
        {"width": 32, "height": 32, "mode": "L", "format": Image.open(io.BytesIO(data)).format},
        None,
    )
    np.testing.assert_array_equal(decoded(data), np.stack([GRAY] * 3, axis=-1))


def test_16bit_grayscale_keeps_its_high_byte_as_a_served_16bit_png_would():
    sixteen = GRAY.astype(np.uint16) * 256 + 3
    png16 = png_bytes(sixteen)
    pgm16 = png_bytes(sixteen, fmt="PPM")  # a 16-bit PGM (maxval 65535)
    assert Image.open(io.BytesIO(pgm16)).format == "PPM"
    assert check_image(pgm16)[1] is None and check_image(png16)[1] is None
    served = tf.io.decode_image(png16, channels=3, dtype=tf.uint8).numpy()
    np.testing.assert_array_equal(decoded(png16), served)
    np.testing.assert_array_equal(decoded(pgm16), served)
    np.testing.assert_array_equal(decoded(pgm16)[..., 0], GRAY)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "1"])
def test_colour_alpha_palette_and_bilevel_images(mode):
    # None: the file's own colours (palette entries; bilevel pixels as 0 / 255)
    expected = {"RGB": RGB, "RGBA": RGB, "P": None, "LA": np.stack([GRAY] * 3, -1), "1": None}[mode]
    for fmt in ("PNG", "BMP") if mode != "LA" else ("PNG",):
        data = png_bytes(RGB if mode in ("RGB", "RGBA", "P") else GRAY, mode=mode, fmt=fmt)
        assert check_image(data)[1] is None
        image = decoded(data)
        want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) if expected is None else expected
        np.testing.assert_array_equal(image, want, err_msg=f"{mode} {fmt}")


def test_png_and_jpeg_pass_through_byte_for_byte():
    for data in (png_bytes(GRAY), png_bytes(RGB, fmt="JPEG")):
        assert to_decodable(data) is data


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_unreadable(shapes_folder, local_store):
    path = shapes_folder / "plain" / "plain-0.png"
    path.chmod(0)
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN)
    assert reasons_by_path(summary)["plain/plain-0.png"] == "unreadable (Permission denied)"


# --- the KFP wrapper ---------------------------------------------------------------------------------


def test_component_and_pipeline_take_label_and_rejected_fraction(tmp_path):
    import yaml

    from medkfp.components.ingest.component import ingest as component
    from medkfp.pipelines.compile import compile_pipeline

    inputs = component.component_spec.inputs
    assert inputs["label"].default == "class"
    assert inputs["max_rejected_fraction"].default == vocab.DEFAULT_MAX_REJECTED_FRACTION
    assert component.component_spec.outputs["manifest"].type == "system.Artifact@0.0.1"
    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["label"]["defaultValue"] == "class"
    assert parameters["max_rejected_fraction"]["defaultValue"] == vocab.DEFAULT_MAX_REJECTED_FRACTION
    wired = spec["root"]["dag"]["tasks"]["ingest"]["inputs"]["parameters"]
    assert wired["label"]["componentInputParameter"] == "label"
    assert wired["max_rejected_fraction"]["componentInputParameter"] == "max_rejected_fraction"
