"""Tests for medkfp.synth: on-disk layouts, formats, determinism, validation, separability."""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medkfp.synth import synth_covid, synth_mias
from medkfp.synth.mias import MIAS_COORDINATE_SIZE, MIAS_INFO_HEADER, MIAS_STUDY_COUNTS
from medkfp.vocab import COVID_CLASSES, COVID_ROOT, MIAS_CLASSES, MIAS_DIR, MIAS_INFO_FILE

# --- helpers --------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    data = path.read_bytes()[:26]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return (
        int.from_bytes(data[16:20], "big"),
        int.from_bytes(data[20:24], "big"),
        data[24],
        data[25],
    )


def _info_rows(folder: Path) -> list[str]:
    lines = (folder / MIAS_INFO_FILE).read_text(encoding="utf-8").split("\n")
    assert lines[0] == MIAS_INFO_HEADER
    assert lines[-1] == ""  # file ends with a newline
    return lines[1:-1]


ROW_NORM = re.compile(r"^mdb\d{3} [FGD] NORM $")
ROW_FULL = re.compile(r"^mdb\d{3} [FGD] (ARCH|ASYM|CALC|CIRC|MISC|SPIC) [BM] \d+ \d+ \d+$")
ROW_NO_CENTRE = re.compile(r"^mdb\d{3} [FGD] CALC [BM]$")


@pytest.fixture(scope="module")
def mias_default(tmp_path_factory) -> Path:
    """The study's class counts (322 films) at 48 px."""
    out = tmp_path_factory.mktemp("mias")
    assert synth_mias(out, size=48, seed=3) == {c: MIAS_STUDY_COUNTS[c] for c in MIAS_CLASSES}
    return out / MIAS_DIR


# --- COVID-19 radiography ---------------------------------------------------------------------------


def test_covid_layout_and_names(tmp_path):
    result = synth_covid(tmp_path, per_class=2, size=32)
    assert result == {c: 2 for c in COVID_CLASSES}
    assert list(result) == list(COVID_CLASSES)

    root = tmp_path / COVID_ROOT
    assert (root / "Viral Pneumonia" / "images" / "Viral Pneumonia-1.png").is_file()
    assert (root / "Lung_Opacity" / "masks" / "Lung_Opacity-2.png").is_file()
    assert (root / "README.md.txt").is_file()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(COVID_CLASSES)
    for name in COVID_CLASSES:
        expected = {f"{name}-1.png", f"{name}-2.png"}
        assert {p.name for p in (root / name / "images").iterdir()} == expected
        assert {p.name for p in (root / name / "masks").iterdir()} == expected


def test_covid_pngs_are_8bit_grayscale_with_binary_masks(tmp_path):
    synth_covid(tmp_path, per_class=2, size=40)
    root = tmp_path / COVID_ROOT
    images = sorted(root.glob("*/images/*.png"))
    assert len(images) == 8
    for image_path in images:
        mask_path = image_path.parent.parent / "masks" / image_path.name
        for path in (image_path, mask_path):
            assert _png_header(path) == (40, 40, 8, 0)  # colour type 0: grayscale
            with Image.open(path) as im:
                assert (im.format, im.mode, im.size) == ("PNG", "L", (40, 40))
        mask = np.asarray(Image.open(mask_path))
        assert set(np.unique(mask)) == {0, 255}
        assert 0.1 < (mask == 255).mean() < 0.6  # two lungs, not the whole film
        image = np.asarray(Image.open(image_path), dtype=np.float32)
        assert image[mask == 255].mean() > image[mask == 0].mean() + 30  # bright lungs


def test_covid_counts_override_per_class(tmp_path):
    result = synth_covid(tmp_path, per_class=5, counts=[1, 0, 3, 2], size=16)
    assert result == dict(zip(COVID_CLASSES, [1, 0, 3, 2], strict=True))
    root = tmp_path / COVID_ROOT
    for name, count in result.items():
        assert len(list((root / name / "images").glob("*.png"))) == count
        assert len(list((root / name / "masks").glob("*.png"))) == count


def test_covid_default_is_20_per_class(tmp_path):
    assert synth_covid(tmp_path, size=16) == {c: 20 for c in COVID_CLASSES}


def test_covid_is_deterministic(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        synth_covid(tmp_path / name, per_class=3, size=48, seed=seed)
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    images = [k for k in a if "/images/" in k]
    assert all(a[k] != c[k] for k in images)


def test_covid_image_does_not_depend_on_other_counts(tmp_path):
    synth_covid(tmp_path / "small", counts=[1, 1, 1, 1], size=32)
    synth_covid(tmp_path / "large", counts=[4, 0, 2, 3], size=32)
    rel = Path(COVID_ROOT) / "COVID" / "images" / "COVID-1.png"
    assert (tmp_path / "small" / rel).read_bytes() == (tmp_path / "large" / rel).read_bytes()


def test_covid_metadata_xlsx_only_when_a_writer_is_installed(tmp_path):
    synth_covid(tmp_path, per_class=2, size=16)
    root = tmp_path / COVID_ROOT
    writers = [m for m in ("openpyxl", "xlsxwriter") if importlib.util.find_spec(m)]
    sheets = sorted(p.name for p in root.glob("*.metadata.xlsx"))
    if not writers:
        assert sheets == []  # skipped rather than faked
        return
    assert sheets == sorted(f"{c}.metadata.xlsx" for c in COVID_CLASSES)
    if importlib.util.find_spec("openpyxl"):
        import pandas as pd

        table = pd.read_excel(root / "Viral Pneumonia.metadata.xlsx")
        assert list(table["FILE NAME"]) == ["Viral Pneumonia-1", "Viral Pneumonia-2"]


def test_covid_progress_bar(tmp_path):
    assert synth_covid(tmp_path, per_class=1, size=16, progress=True) == dict.fromkeys(COVID_CLASSES, 1)


def test_covid_classes_are_separable_after_downscaling(tmp_path):
    """A linear model on 16x16 thumbnails (pixels + gradient magnitude) tells the classes apart."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n, n_train = 60, 40
    synth_covid(tmp_path, per_class=n, size=64, seed=11)
    root = tmp_path / COVID_ROOT

    def features(path: Path) -> np.ndarray:
        small = Image.open(path).resize((32, 32), Image.Resampling.BILINEAR)
        pixels = np.asarray(small, dtype=np.float32) / 255.0
        gy, gx = np.gradient(pixels)
        maps = (pixels, np.hypot(gx, gy))
        thumbs = [Image.fromarray(m).resize((16, 16), Image.Resampling.BILINEAR) for m in maps]
        return np.concatenate([np.asarray(t).ravel() for t in thumbs])

    x, y, train = [], [], []
    for label, name in enumerate(COVID_CLASSES):
        for k in range(1, n + 1):
            x.append(features(root / name / "images" / f"{name}-{k}.png"))
            y.append(label)
            train.append(k <= n_train)
    x, y, train = np.array(x), np.array(y), np.array(train)

    def held_out_accuracy(labels: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        model.fit(x[train], labels[train])
        return float((model.predict(x[~train]) == labels[~train]).mean())

    assert held_out_accuracy(y) >= 0.9
    # Control: with shuffled labels the same model is near chance (0.25).
    assert held_out_accuracy(np.random.default_rng(0).permutation(y)) < 0.5


# --- mini-MIAS ----------------------------------------------------------------------------------------


def test_mias_pgm_files(tmp_path):
    result = synth_mias(tmp_path, per_class=2, size=40)
    assert result == {c: 2 for c in MIAS_CLASSES}
    folder = tmp_path / MIAS_DIR
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([MIAS_INFO_FILE] + [f"mdb{i:03d}.pgm" for i in range(1, 15)])
    for path in folder.glob("*.pgm"):
        data = path.read_bytes()
        header = b"P5\n40 40\n255\n"
        assert data.startswith(header) and len(data) == len(header) + 40 * 40
        with Image.open(path) as im:
            assert (im.mode, im.size) == ("L", (40, 40))


def test_mias_info_txt_formats(mias_default):
    rows = _info_rows(mias_default)
    for row in rows:
        assert ROW_NORM.match(row) or ROW_FULL.match(row) or ROW_NO_CENTRE.match(row), row
    assert any(ROW_NORM.match(r) for r in rows)
    assert any(r.endswith(" NORM ") for r in rows)  # trailing blank after NORM
    assert any(ROW_NO_CENTRE.match(r) for r in rows)  # e.g. "mdb238 F CALC M"

    refs = [r.split()[0] for r in rows]
    assert refs == sorted(refs)  # rows in film order, a film's rows together
    assert sorted(set(refs)) == [f"mdb{i:03d}" for i in range(1, 323)]
    assert {p.stem for p in mias_default.glob("*.pgm")} == set(refs)

    by_ref: dict[str, list[list[str]]] = {}
    for row in rows:
        by_ref.setdefault(row.split()[0], []).append(row.split())
    multi = {ref: fields for ref, fields in by_ref.items() if len(fields) > 1}
    assert multi, "expected a few films with several abnormalities"
    for fields in multi.values():
        assert len({f[1] for f in fields}) == 1  # same tissue
        assert len({f[2] for f in fields}) == 1  # same class
        assert all(len(f) == 7 for f in fields)  # each with a centre and radius
    for fields in by_ref.values():
        for f in fields:
            if len(f) == 7:
                x, y, radius = map(int, f[4:])
                assert 0 <= x <= MIAS_COORDINATE_SIZE and 0 <= y <= MIAS_COORDINATE_SIZE
                assert radius > 0

    first = Counter(fields[0][2] for fields in by_ref.values())
    assert first == Counter(MIAS_STUDY_COUNTS)


def test_mias_pairs_share_tissue_and_are_mirrored(mias_default):
    tissue = {r.split()[0]: r.split()[1] for r in _info_rows(mias_default)}
    for odd in range(1, 322, 2):
        left, right = f"mdb{odd:03d}", f"mdb{odd + 1:03d}"
        assert tissue[left] == tissue[right]
        for ref, chest_wall_left in ((left, True), (right, False)):
            image = np.asarray(Image.open(mias_default / f"{ref}.pgm"), dtype=np.float32)
            left_edge, right_edge = image[:, :3].mean(), image[:, -3:].mean()
            assert (left_edge > right_edge + 20) == chest_wall_left, ref


def test_mias_lesion_is_drawn_at_x_y_with_origin_bottom_left(tmp_path):
    size = 256
    synth_mias(tmp_path, counts=[0, 0, 0, 12, 0, 0, 0], size=size, seed=1)  # CIRC only
    folder = tmp_path / MIAS_DIR
    rows = [r.split() for r in _info_rows(folder)]
    assert rows and all(r[2] == "CIRC" for r in rows)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    scale = size / MIAS_COORDINATE_SIZE
    for ref, _, _, _, x, y, radius in rows:
        image = np.asarray(Image.open(folder / f"{ref}.pgm"), dtype=np.float32)
        col, row, r = int(x) * scale, (MIAS_COORDINATE_SIZE - int(y)) * scale, int(radius) * scale
        d = np.hypot(xx - col, yy - row)
        inside = image[d < 0.6 * r].mean()
        ring = image[(d > 1.3 * r) & (d < 2.0 * r)].mean()
        assert inside > ring + 40, (ref, inside, ring)


def test_mias_counts_and_per_class(tmp_path):
    counts = [1, 0, 2, 0, 3, 1, 0]
    assert synth_mias(tmp_path / "c", counts=counts, size=16) == dict(zip(MIAS_CLASSES, counts, strict=True))
    rows = _info_rows(tmp_path / "c" / MIAS_DIR)
    first: dict[str, str] = {}
    for row in rows:
        first.setdefault(row.split()[0], row.split()[2])
    assert Counter(first.values()) == Counter({"ARCH": 1, "CALC": 2, "MISC": 3, "NORM": 1})
    assert len(list((tmp_path / "c" / MIAS_DIR).glob("*.pgm"))) == 7

    assert synth_mias(tmp_path / "p", per_class=1, size=16) == dict.fromkeys(MIAS_CLASSES, 1)


def test_mias_is_deterministic(tmp_path):
    for name, seed in (("a", 2), ("b", 2), ("c", 9)):
        synth_mias(tmp_path / name, per_class=2, size=64, seed=seed)
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a[f"{MIAS_DIR}/{MIAS_INFO_FILE}"] != c[f"{MIAS_DIR}/{MIAS_INFO_FILE}"]
    assert all(a[k] != c[k] for k in a if k.endswith(".pgm"))


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [1, 2, 3]}, "counts has 3 values but there are 4 classes"),
        ({"counts": [1, -2, 3, 4]}, "non-negative"),
        ({"counts": [1, 2.5, 3, 4]}, "non-negative ints"),
        ({"counts": "1234"}, "sequence of 4 ints"),
        ({"per_class": -1}, "per_class must be a non-negative int"),
        ({"per_class": 2.0}, "per_class must be a non-negative int"),
        ({"size": 15}, "size must be an int >= 16"),
        ({"size": 32.0}, "size must be an int >= 16"),
        ({"seed": -1}, "seed must be a non-negative int"),
    ],
)
def test_covid_rejects_bad_arguments(tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        synth_covid(out, **kwargs)
    assert not out.exists()  # validated before anything is written


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counts": [1] * 4}, "counts has 4 values but there are 7 classes"),
        ({"counts": [0, 0, 0, 0, 0, -1, 0]}, "non-negative"),
        ({"per_class": 143}, "at most 999"),
        ({"size": 8}, "size must be an int >= 16"),
    ],
)
def test_mias_rejects_bad_arguments(tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        synth_mias(out, **kwargs)
    assert not out.exists()


@pytest.mark.parametrize("fn", [synth_covid, synth_mias])
def test_out_dir_that_is_a_file_is_rejected(tmp_path, fn):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        fn(path, per_class=1, size=16)
