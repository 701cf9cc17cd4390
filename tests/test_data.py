"""Loading, validation errors, the duplicate report and the brain MRI converter."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_one_clear_line, real_data, write_npz
from hfgan_core.data import PRESETS, build_brainmri, duplicate_groups, load_dataset, quality_report
from hfgan_core.errors import UserError


# --- any MedMNIST-format file works ------------------------------------------------------------

def test_unknown_dataset_loads_with_no_code_change(tmp_path):
    write_npz(tmp_path / "neverseen.npz", channels=3, classes=4, size=64)
    ds = load_dataset("neverseen", tmp_path)
    assert (ds.num_classes, ds.channels, ds.image_size) == (4, 3, 64)
    assert ds.class_names == ("class 0", "class 1", "class 2", "class 3")
    x, y = ds.train.tensors()
    assert x.shape == (40, 3, 64, 64) and x.min() >= -1 and x.max() <= 1 and y.dtype.is_floating_point is False


def test_other_medmnist_name_gets_its_class_names(tmp_path):
    write_npz(tmp_path / "bloodmnist.npz", channels=3, classes=8, n=(16, 8, 8))
    ds = load_dataset("bloodmnist", tmp_path)
    assert ds.num_classes == 8 and "neutrophil" in ds.class_names


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_npz(tmp_path / "tiny.npz")
    monkeypatch.setenv("HFGAN_DATA_DIR", str(tmp_path))
    assert load_dataset("tiny").path == tmp_path / "tiny.npz"


# --- bad input: one clear error naming the file and the problem --------------------------------

BAD = {
    "missing key": (dict(val_labels=None), "missing key(s) val_labels"),
    "wrong dtype": (dict(train_images=np.zeros((40, 28, 28), np.float32)), "dtype float32"),
    "wrong rank": (dict(train_images=np.zeros((40, 28), np.uint8)), "expected (N,H,W) grayscale"),
    "label out of range": (dict(test_labels=np.full((12, 1), 7, np.uint8)), "label 7"),
    "empty split": (dict(val_images=np.zeros((0, 28, 28), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
                    "val split is empty"),
    "count mismatch": (dict(train_labels=np.zeros((39, 1), np.uint8)), "40 images but 39 labels"),
    "shape mismatch": (dict(test_images=np.zeros((12, 32, 32), np.uint8)), "splits disagree on image shape"),
    "multi-label": (dict(train_labels=np.zeros((40, 3), np.uint8)), "multi-label"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arrays_give_clear_errors(tmp_path, case):
    override, message = BAD[case]
    name = "pneumoniamnist" if case == "label out of range" else "custom"
    write_npz(tmp_path / f"{name}.npz", classes=2, **override)
    with pytest.raises(UserError) as err:
        load_dataset(name, tmp_path)
    assert message in str(err.value) and f"{name}.npz" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", "truncated"])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "broken.npz"
    if content == "truncated":
        good = write_npz(tmp_path / "good.npz").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_dataset("broken", tmp_path)


def test_missing_medmnist_file_offers_download(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_dataset("retinamnist", tmp_path)


def test_missing_brainmri_points_to_converter(tmp_path):
    with pytest.raises(UserError, match="build-brainmri --from"):
        load_dataset("brainmri_64", tmp_path)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hfgan_core.data", "check", "pneumoniamnist",
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert_one_clear_line(proc, "pneumoniamnist.npz not found")


# --- the shared real files ---------------------------------------------------------------------

EXPECTED = {"pneumoniamnist": ((4708, 524, 624), 2, 1, 28), "retinamnist": ((1080, 120, 400), 5, 3, 28),
            "brainmri": ((4960, 545, 1092), 4, 1, 28), "brainmri_64": ((4960, 545, 1092), 4, 1, 64)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_files_load(name):
    real_data(f"{name}.npz")
    ds = load_dataset(name)
    sizes, k, c, s = EXPECTED[name]
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    assert (ds.num_classes, ds.channels, ds.image_size) == (k, c, s)
    assert ds.class_names == PRESETS[name].class_names


def test_pneumonia_duplicates_are_reported():
    real_data("pneumoniamnist.npz")
    ds = load_dataset("pneumoniamnist")
    groups = duplicate_groups(ds)
    cross = [g for g in groups if len({s for s, _ in g}) > 1]
    # Brute force: hash-free pairwise comparison of the rows that the report groups.
    for g in groups:
        first = ds.split(g[0][0]).images[g[0][1]]
        assert all(np.array_equal(first, ds.split(s).images[i]) for s, i in g)
    # Independently, np.unique over every row of every split: the report misses no duplicate either.
    rows = np.concatenate([ds.split(s).images.reshape(len(ds.split(s)), -1) for s in ("train", "val", "test")])
    where = np.concatenate([[s] * len(ds.split(s)) for s in ("train", "val", "test")])
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    spans = [len(set(where[inverse == u])) > 1 for u in np.flatnonzero(counts > 1)]
    assert len(groups) == (counts > 1).sum() and sum(len(g) - 1 for g in groups) == (counts - 1).sum()
    assert len(cross) == sum(spans)
    assert (len(groups), sum(len(g) - 1 for g in groups), len(cross)) == (27, 29, 8)  # as the data README says
    assert all({s for s, _ in g} == {"train", "val"} for g in cross)
    report = quality_report(ds)
    assert "27 groups (29 extra copies), 8 groups span splits" in report


def test_brainmri_converter_reproduces_stored_rows(tmp_path):
    sample = real_data("brainmri_raw_sample")
    stored28, stored64 = np.load(real_data("brainmri.npz")), np.load(real_data("brainmri_64.npz"))
    with open(real_data("brainmri_manifest.csv")) as f:
        where = {row["source_file"]: row for row in csv.DictReader(f)}
    rows = build_brainmri(sample, tmp_path)
    built28, built64 = np.load(tmp_path / "brainmri.npz"), np.load(tmp_path / "brainmri_64.npz")
    assert len(rows) == 40
    for row in rows:
        ref = where[row["source_file"]]
        assert int(ref["label"]) == row["label"]
        for built, stored in ((built28, stored28), (built64, stored64)):
            mine = built[f"{row['split']}_images"][row["index"]]
            theirs = stored[f"{ref['split']}_images"][int(ref["index"])]
            assert np.array_equal(mine, theirs), row["source_file"]


def test_brainmri_converter_split_recipe(tmp_path):
    """On a fake Kaggle tree, the splits follow the README recipe computed independently here."""
    from PIL import Image
    rng = np.random.default_rng(5)
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    for folder, n in (("Training", 12), ("Testing", 3)):
        for c in classes:
            (tmp_path / "src" / folder / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(
                    tmp_path / "src" / folder / c / f"{c[:2]}_{i:03d}.jpg")
    rows = build_brainmri(tmp_path / "src", tmp_path / "out")
    train = [(f"Training/{c}/{c[:2]}_{i:03d}.jpg", k) for k, c in enumerate(classes) for i in range(12)]
    picker = np.random.default_rng(0)
    val_idx = set()
    for k in range(4):
        idx = np.array([j for j, (_, y) in enumerate(train) if y == k])
        val_idx |= set(picker.choice(idx, round(0.1 * len(idx)), replace=False).tolist())
    shuffle = np.random.default_rng(1)
    expect = {"train": [train[j] for j in range(len(train)) if j not in val_idx],
              "val": [train[j] for j in sorted(val_idx)],
              "test": [(f"Testing/{c}/{c[:2]}_{i:03d}.jpg", k) for k, c in enumerate(classes) for i in range(3)]}
    for split in ("train", "val", "test"):
        order = [expect[split][j][0] for j in shuffle.permutation(len(expect[split]))]
        assert [r["source_file"] for r in rows if r["split"] == split] == order


def test_converter_rejects_wrong_folder(tmp_path):
    with pytest.raises(UserError, match="no Training/ folder"):
        build_brainmri(tmp_path, tmp_path / "out")


def test_download_fetches_verifies_and_says_what(tmp_path, fake_zenodo, capsys):
    info, served = fake_zenodo
    ds = load_dataset("retinamnist", tmp_path / "data", download=True)
    assert len(ds.train) == 30 and ds.channels == 3
    assert (tmp_path / "data" / "retinamnist.npz").read_bytes() == served.read_bytes()
    err = capsys.readouterr().err
    assert "fetching retinamnist.npz" in err and "CC BY 4.0" in err and str(tmp_path / "data") in err
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["retinamnist.npz"]  # no temporary left


@pytest.mark.parametrize("fault,message", [("md5", "is corrupt"), ("sizes", "medmnist lists 31"),
                                           ("offline", "downloading retinamnist failed")])
def test_bad_download_is_refused_and_leaves_nothing(tmp_path, fake_zenodo, fault, message):
    info, _ = fake_zenodo
    if fault == "md5":
        info["MD5"] = "0" * 32
    elif fault == "sizes":
        info["n_samples"] = {"train": 31, "val": 10, "test": 10}
    else:
        info["url"] = "http://127.0.0.1:9/retinamnist.npz"  # the discard port: nothing listens
    with pytest.raises(UserError, match=message):
        load_dataset("retinamnist", tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []
