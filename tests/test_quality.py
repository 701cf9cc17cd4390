"""Generator-quality metrics against brute-force loops and closed cases; the synthetic dataset a
user takes away; the quality command end to end on a tiny file."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import assert_one_clear_line, real_data, write_npz
from hfgan_core.data import load_dataset, load_split
from hfgan_core.errors import UserError
from hfgan_core.gan_quality import QualityRunConfig, run_quality, write_markdown
from hfgan_core.models import Generator
from hfgan_core.quality import QualityConfig, cas, copy_check, knn_radii, prdc, tstr
from hfgan_core.synthesis import images_for_labels, save_synthetic, to_uint8


def brute_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """The definitions, one point at a time (Kynkäänniemi et al. 2019; Naeem et al. 2020)."""
    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radius(points, i):
        return sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(dist(f, real[i]) <= r_real[i] for i in range(len(real))) for f in fake])
    recall = np.mean([any(dist(r, fake[j]) <= r_fake[j] for j in range(len(fake))) for r in real])
    density = sum(dist(f, real[i]) <= r_real[i] for f in fake for i in range(len(real))) / (k * len(fake))
    coverage = np.mean([min(dist(real[i], f) for f in fake) <= r_real[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_matches_the_definitions():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(40, 3))
    fake = rng.normal(loc=0.7, scale=0.6, size=(30, 3))  # shifted and narrower: precision != recall
    got = prdc(torch.from_numpy(real), torch.from_numpy(fake), k=4)
    want = brute_prdc(real, fake, k=4)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["precision"] != got["recall"]


def test_prdc_extremes():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    same = prdc(x, x.clone(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    collapsed = prdc(x, x[:1].repeat(50, 1) + 1e-3 * torch.randn(50, 4), k=5)  # one picture, many times
    assert collapsed["coverage"] < 0.15 and collapsed["recall"] < 0.15
    far = prdc(x, x + 100.0, k=5)
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0


def test_knn_radius_excludes_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]


def test_copy_check_flags_copies_and_not_fresh_images():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(200, 1, 8, 8, generator=gen)
    val = torch.rand(60, 1, 8, 8, generator=gen)
    copies = copy_check(train[:50] + 1e-4, train, val)
    fresh = copy_check(torch.rand(50, 1, 8, 8, generator=gen), train, val)
    assert copies["nn_below_val_p05"] == 1.0
    assert fresh["nn_below_val_p05"] < 0.3 and 0.2 < fresh["nn_below_val_median"] < 0.8


def test_cas_is_accuracy_against_the_intended_labels():
    class Fixed(torch.nn.Module):  # predicts class 1 for everything
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.tensor([[0.0, 5.0]]).repeat(len(x), 1) + 0 * self.w

    y = torch.tensor([0, 1, 1, 1])
    out = cas(Fixed(), torch.zeros(4, 1, 2, 2), y)
    assert out["cas"] == 0.75 and out["cas_per_class"] == [0.0, 1.0]


def test_tstr_learns_a_separable_task_and_stops_on_its_own_holdout():
    gen = torch.Generator().manual_seed(0)
    def images(n):
        y = torch.arange(n) % 2
        x = torch.rand(n, 1, 12, 12, generator=gen) * 0.5 - 0.25
        x[y == 1, :, :6] += 0.7  # class 1: bright top half
        return x, y
    x, y = images(300)
    val = images(100)
    out = tstr(x, y, val, num_classes=2, config=QualityConfig(tstr_max_epochs=30, tstr_patience=3))
    assert out["auc"] > 0.99 and out["balanced_accuracy"] > 0.95
    assert out["epochs_run"] <= 30 and out["epochs"] <= out["epochs_run"] and out["train_images"] == 270


def test_synthetic_dataset_round_trips_through_our_loader_and_numpy(tmp_path):
    torch.manual_seed(0)
    gens = [Generator(num_classes=3, channels=3, image_size=28, nz=8, ngf=8).eval() for _ in range(2)]
    path = save_synthetic(tmp_path / "synth.npz", gens, per_class=7, num_classes=3, seed=4,
                          meta={"epsilon": 10.0, "delta": 1e-5, "unit": "record", "accountant": "prv"})
    split = load_split(path)  # the project's loader, with its checks
    assert split.images.shape == (21, 28, 28, 3) and split.images.dtype == np.uint8
    assert np.bincount(split.labels).tolist() == [7, 7, 7]
    with np.load(path) as npz:  # plain numpy, MedMNIST layout
        assert set(npz.files) == {"train_images", "train_labels"} and npz["train_labels"].shape == (21, 1)
    want = to_uint8(images_for_labels(gens, torch.arange(3).repeat_interleave(7), 4)[0])
    assert np.array_equal(split.images, want)  # the images the generators draw for that seed
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["epsilon"] == 10.0 and meta["images"] == 21 and meta["unit"] == "record"
    grey = save_synthetic(tmp_path / "grey.npz", [Generator(num_classes=2, channels=1, image_size=28, nz=8, ngf=8)],
                          per_class=2, num_classes=2, seed=0, meta={})
    assert load_split(grey).images.shape == (4, 28, 28, 1) and np.load(grey)["train_images"].shape == (4, 28, 28)


def test_load_split_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_split(tmp_path / "none.npz")
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(UserError, match="missing key"):
        load_split(tmp_path / "bad.npz")


def test_quality_command_on_a_tiny_file(tmp_path, monkeypatch):
    write_npz(tmp_path / "data" / "tiny.npz", n=(160, 40, 30), classes=2)
    ds = load_dataset("tiny", tmp_path / "data")
    monkeypatch.chdir(tmp_path)  # the extractor cache (results/extractors) lands here
    config = QualityRunConfig(datasets=["tiny"], seeds=[0], epsilons=[math.inf, 10.0], data_dir=str(tmp_path / "data"),
                              clients=2, partition="iid",
                              gan=dict(rounds=2, batch_size=8, nz=8, ngf=8, ndf=8, accountant="rdp",
                                       synthetic_per_class=5, min_client_size=8),
                              quality=QualityConfig(per_class=20, tstr_max_epochs=2, fid_draws=1, max_manifold=30),
                              extractor_epochs=1)
    reports = run_quality(config, tmp_path / "out", progress=False)
    report = reports["tiny"]
    assert [(r["seed"], r["epsilon"]) for r in report["runs"]] == [(0, math.inf), (0, 10.0)]
    for r in report["runs"] + [report["untrained"], report["reference"]]:
        assert set(r) >= {"tstr", "cas", "fid", "fid_per_class", "precision", "recall", "coverage",
                          "nn_below_val_p05"}
        assert len(r["coverage"]) == 2 and 0 <= r["tstr"]["auc"] <= 1
    assert report["runs"][1]["max_epsilon"] <= 10.0
    # a simulation (noise from the seed) releases nothing: its synthetic set stays in its run folder, labelled
    assert not list((tmp_path / "out" / "tiny").glob("synthetic*"))
    run_dir = tmp_path / "out" / "tiny" / "quality_runs" / "hfgan-seed0-eps10.0"
    assert load_split(run_dir / "synthetic.npz").images.shape == (10, 28, 28, 1)
    assert "not a release" in json.loads((run_dir / "synthetic.json").read_text())["note"]
    text = (tmp_path / "out" / "gan_quality.md").read_text()
    assert "HF-GAN, ε = ∞" in text and "HF-GAN, ε = 10" in text and "untrained generator" in text
    assert text == write_markdown(tmp_path / "out").read_text()  # rendered from the JSON alone
    assert (tmp_path / "out" / "figures" / "quality_tiny_samples.png").exists() and "quality_tiny_samples.png" in text
    assert ds.test is not None  # the file has a test split; the command never handed it out
    assert [r["resumed"] for r in report["runs"]] == ["none", "none"]
    # --resume judges the finished runs' saved generators again: same images, same numbers
    (tmp_path / "out" / "tiny" / "quality_runs" / "hfgan-seed0-eps10.0" / "generators.pt").unlink()  # interrupted
    again = run_quality(config, tmp_path / "out", progress=False, resume=True)["tiny"]
    assert [r["resumed"] for r in again["runs"]] == ["finished", "checkpoint"]
    for a, b in zip(report["runs"], again["runs"]):
        assert (a["tstr"], a["cas"], a["coverage"], a["rounds"]) == (b["tstr"], b["cas"], b["coverage"], b["rounds"])
    changed = replace(config, gan=config.gan | dict(rounds=3), epsilons=[math.inf])
    assert run_quality(changed, tmp_path / "out", progress=False, resume=True)["tiny"]["runs"][0]["rounds"] == 3


@pytest.mark.parametrize("args,message", [
    (["--epsilon", "0"], "--epsilon values must be positive"),
    (["--seeds", "1", "1"], "must not repeat"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--datasets", "nosuchset"], "nosuchset.npz not found"),
    (["--clients", "10000"], "10000 clients x minimum size"),  # before the extractor and references are made
    (["--device", "cuda"], "has no CUDA GPU; use --device cpu") if not torch.cuda.is_available()
    else (["--epsilon", "-1"], "--epsilon values must be positive"),
])
def test_quality_cli_bad_input_is_one_clear_line(tmp_path, cli, args, message):
    real_data("pneumoniamnist.npz")
    proc = cli("quality", "--datasets", "pneumoniamnist", "--out", tmp_path / "q", *args)
    assert_one_clear_line(proc, message)
    assert not (tmp_path / "q").exists()  # nothing half-written
