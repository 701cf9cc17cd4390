"""Notebooks: committed without outputs, on the python3 kernel, and they run (smoke settings);
`make tables` writes every table, figure and results/README.md, and skips a missing dataset."""
from __future__ import annotations

import csv
import importlib
import json

import numpy as np
import papermill
import pytest

from conftest import ROOT, assert_one_clear_line, real_data
from hfgan_core import report
from hfgan_core.benchmark import CURVE_METHODS, METHODS
from hfgan_core.errors import UserError

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_carry_no_outputs(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"


def test_walkthrough_runs_top_to_bottom(tmp_path):
    real_data("pneumoniamnist.npz")
    out = tmp_path / "walkthrough.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "00_walkthrough.ipynb"), str(out), kernel_name="python3",
                               parameters={"smoke": True}, cwd=str(ROOT), progress_bar=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o["output_type"] == "error"]
    assert not errors
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"])
    assert "aggregation weights" in text and "FedAvg + own synthetic" in text


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """`make tables` under the smoke profile (one seed; curve at 10 and inf): every dataset notebook, executed."""
    for name in report.TABLES:
        real_data(f"{name}.npz")
    out = tmp_path_factory.mktemp("tables")
    assert report.make_tables(profile="smoke", out=out, jobs=2,  # two notebooks side by side, one thread each
                              parameters={"seeds": [0], "epsilons": [10, "inf"]}) == 0
    return out


@pytest.mark.parametrize("dataset", list(report.TABLES))
def test_dataset_notebook_writes_its_table_and_figures(tables, dataset):
    t = report.TABLES[dataset]
    executed = json.loads((tables / "notebooks" / t.notebook).read_text())
    assert not [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                if o["output_type"] == "error"]
    rows = list(csv.DictReader((tables / f"{t.stem}.csv").open()))
    assert {r["method"] for r in rows} == set(METHODS)  # every method row ...
    for column in ("accuracy", "macro_f1", "auc", "inception_score", "fid", "gan_epsilon", "released_epsilon"):
        assert column in rows[0]  # ... and every metric column
    saved = np.load(tables / dataset / "probas.npz")  # what each row predicted on the test split
    for r in rows:  # the notebook's table holds the accuracy of those predictions (mean over models)
        p = saved[f"{r['method']}|0|{r['epsilon_target']}"]
        assert float(r["accuracy"]) == pytest.approx(np.mean(p.argmax(-1) == saved["y_test"]), abs=1e-6)
    curve = {(r["method"], r["epsilon_target"]) for r in rows}
    for method in CURVE_METHODS:  # the privacy-utility curve: every epsilon of the notebook ...
        assert (method, "10.0") in curve
        assert ((method, "inf") in curve) == (method != "dp_fedavg")  # ... but no noise-free DP classifier (FedAvg)
    assert ("dpfedavg_gan", "inf") not in curve  # other private methods: the table's epsilon only
    table = json.loads((tables / f"{t.stem}.json").read_text())
    assert table["dataset"] == dataset and len(table["rows"]) == len(rows)
    md = (tables / f"{t.stem}.md").read_text()
    assert all(f"| {m.label} |" in md for m in METHODS.values()) and "δ = 1e-05" in md
    assert "Δ acc. vs FedAvg [95 % CI]" in md and "delta_vs_null" in rows[0]  # the paired columns reach results/
    for kind in report.FIGURES:
        assert report.figure_path(tables, dataset, kind).stat().st_size > 10_000
    readme = (tables / "README.md").read_text()
    assert t.title in readme and f"figures/{t.stem}_privacy_utility.png" in readme and "ran in" in readme


def test_missing_dataset_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    source = real_data("pneumoniamnist.npz")
    data = tmp_path / "data"
    data.mkdir()
    (data / "pneumoniamnist.npz").symlink_to(source.resolve())
    (data / "retinamnist.npz").write_bytes(b"not an npz")
    ran = []
    monkeypatch.setattr(report, "_execute",
                        lambda t, params, out, progress_bar: ran.append(t.stem) or "ran in 0.1 min")
    assert report.make_tables(profile="smoke", out=tmp_path / "out", data_dir=str(data)) == 0
    assert ran == ["table1_chest_xray", "table4_privacy_attacks"]  # table 4 attacks the chest X-ray runs
    err = capsys.readouterr().err
    assert "skipping table2_brain_mri" in err and "build-brainmri" in err  # how to get it
    assert "skipping table3_retinal_fundus" in err and "not a readable .npz" in err
    readme = (tmp_path / "out" / "README.md").read_text()
    assert "not run:" in readme and "build-brainmri" in readme


@pytest.mark.parametrize("profile,folder", [("paper", "results"), ("quick", "results/quick"), ("smoke", "results/smoke")])
def test_only_the_paper_profile_writes_the_committed_tables(tmp_path, monkeypatch, profile, folder):
    """Without --out, `make tables` hands its notebooks results/ for the paper profile only: a quick
    preview (what a CPU gets) or a smoke check goes to results/<profile>/, never over the committed tables."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "pneumoniamnist.npz").symlink_to(real_data("pneumoniamnist.npz").resolve())
    monkeypatch.chdir(tmp_path)
    seen = []
    monkeypatch.setattr(report, "_execute", lambda t, params, out, progress_bar: seen.append(params["out_dir"]) or "ran")
    assert report.make_tables(profile=profile, device="cpu", data_dir=str(data), datasets=["pneumoniamnist"],
                              attacks=False) == 0
    assert seen == [str(tmp_path / folder)] and (tmp_path / folder / "README.md").exists()
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("README.md")] == [f"{folder}/README.md"]


@pytest.mark.parametrize("args,message", [(["--profile", "huge"], "unknown profile"),
                                          (["--datasets", "nosuch"], "no table for dataset"),
                                          (["--jobs", "0"], "--jobs must be at least 1"),
                                          (["--device", "tpu"], "--device must be cpu, cuda, cuda:<index> or auto"),
                                          (["--out", "FILE"], "is a file, not a folder")])
def test_tables_cli_bad_input_is_one_clear_line(tmp_path, cli, args, message):
    (tmp_path / "FILE").write_text("not a folder")
    proc = cli("tables", "--out", tmp_path / "t", *[tmp_path / a if a == "FILE" else a for a in args])
    assert_one_clear_line(proc, message)
    assert not (tmp_path / "t").exists()


def test_make_tables_fetches_a_missing_medmnist_file(tmp_path, fake_zenodo, monkeypatch, capsys):
    """On a fresh machine `make tables` fetches RetinaMNIST (network: a loopback stand-in), verifies
    it and runs its table; with --no-download it is skipped, saying how to get it."""
    ran = []
    monkeypatch.setattr(report, "_execute", lambda t, params, out, progress_bar: ran.append(t.stem) or "ran")
    data = tmp_path / "data"
    with pytest.raises(UserError, match="no table can run: table3_retinal_fundus: .*check retinamnist --download"):
        report.make_tables(profile="smoke", out=tmp_path / "o1", data_dir=str(data), datasets=["retinamnist"],
                           download=False)
    assert ran == [] and not (tmp_path / "o1").exists()
    assert report.make_tables(profile="smoke", out=tmp_path / "o2", data_dir=str(data), datasets=["retinamnist"]) == 0
    assert ran == ["table3_retinal_fundus"] and (data / "retinamnist.npz").exists()
    assert "fetching retinamnist.npz" in capsys.readouterr().err


def test_auto_profile_is_paper_on_a_gpu_and_quick_otherwise(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert report.resolve_auto("auto", "auto") == ("quick", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert report.resolve_auto("auto", "auto") == ("paper", "cuda")
    assert report.resolve_auto("auto", "cpu") == ("quick", "cpu")  # asked for the CPU: the CPU preview
    assert report.resolve_auto("smoke", "auto") == ("smoke", "cuda")  # an explicit profile is kept


def test_flower_notebook_shows_the_same_run_on_flower(tmp_path):
    importlib.import_module("flwr")  # a pinned dependency: a broken install fails, never skips
    real_data("pneumoniamnist.npz")
    out = tmp_path / "flower.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_flower.ipynb"), str(out), kernel_name="python3",
                               parameters={"smoke": True}, cwd=str(ROOT), progress_bar=False)
    executed = json.loads(out.read_text())
    text = "".join("".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code"
                   for o in c["outputs"])
    assert "metrics.jsonl: identical" in text and "privacy.json: identical" in text and "DIFFERENT" not in text
    assert "round 2: dropped" in text
