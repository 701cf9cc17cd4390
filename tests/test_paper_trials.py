"""scripts/paper_trials.py keeps tuning trials across processes without changing the tuning, and
holds the headline's tuning in the pinned sweeps as main's sweeps do.

Checked against the benchmark's own Tuner.fit (unchanged since the paper runs' pin): with the memo
a second process makes the same choice and log while training only the row; other data, another
config or another stamp is not taken from the memo. The sweeps' hold: against main's
``sweeps._hold_tuning``."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hfgan_core.benchmark.tuning import TRIAL_SEED, Tuner
from hfgan_core.federated import FedConfig, FedResult
from conftest import write_npz

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_trials.py"


def _script():
    spec = importlib.util.spec_from_file_location("paper_trials", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train(data: torch.Tensor, calls: list):
    """A stand-in classifier: its validation AUC is a function of lr, epochs, seed and the data."""
    def train(cfg: FedConfig, spec):
        calls.append(cfg)
        auc = 0.5 + 0.1 * cfg.lr * 100 + 0.01 * cfg.local_epochs + 1e-4 * (cfg.seed % 7) + float(data.sum()) * 1e-6
        return [FedResult(model=None, best_round=2, val_history=[{"auc": 0.1}, {"auc": auc}], epsilons=None,
                          noise_multipliers=None)]
    return train


def _out(tmp_path: Path, stamp: str = '{"code": "x"}') -> Path:
    (tmp_path / "units").mkdir(parents=True, exist_ok=True)
    (tmp_path / "units" / "stamp.json").write_text(stamp)
    return tmp_path


def test_memo_reuses_trials_and_keeps_the_tuning(tmp_path):
    memo = _script().TrialMemo(_out(tmp_path))
    fed, data = FedConfig(seed=3), torch.arange(12.0)
    plain_calls, first_calls, again_calls = [], [], []
    plain = Tuner(k=5).fit("fedavg", float("inf"), 3, _train(data, plain_calls), fed)
    tuner = Tuner(k=5)
    first = tuner.fit("fedavg", float("inf"), 3, memo.wrap("fedavg", float("inf"), 3, fed, _train(data, first_calls)), fed)
    assert [c.seed for c in first_calls] == [3 + TRIAL_SEED] * 5 + [3] and len(first_calls) == len(plain_calls)
    assert len(list((tmp_path / "trials").glob("*.json"))) == 5
    again = Tuner(k=5)  # a later process: the same trials, taken from the memo; only the row is trained
    second = again.fit("fedavg", float("inf"), 3, memo.wrap("fedavg", float("inf"), 3, fed, _train(data, again_calls)), fed)
    assert [c.seed for c in again_calls] == [3]
    assert tuner.log == again.log
    assert first[1] == second[1] == plain[1]
    assert second[0][0].val_history == plain[0][0].val_history  # the row: a real run at the same point
    saved = [json.loads(p.read_text())["val_auc"] for p in (tmp_path / "trials").glob("*.json")]
    assert sorted(saved) == sorted(t["val_auc"] for t in tuner.log["fedavg|inf"]["tried"])


def test_memo_keys_on_data_config_and_stamp(tmp_path):
    mod = _script()
    fed = FedConfig(seed=3)
    calls = []
    Tuner(k=3).fit("fedavg", float("inf"), 3, mod.TrialMemo(_out(tmp_path)).wrap(
        "fedavg", float("inf"), 3, fed, _train(torch.arange(12.0), calls)), fed)
    assert len(calls) == 4
    for method, data, stamp in [("fedavg", torch.arange(12.0) + 1, '{"code": "x"}'),  # other data
                                ("fedavg_balanced", torch.arange(12.0), '{"code": "x"}'),  # another method, same grid
                                ("fedavg", torch.arange(12.0), '{"code": "y"}')]:      # another unit stamp
        calls.clear()
        memo = mod.TrialMemo(_out(tmp_path, stamp))
        Tuner(k=3).fit(method, float("inf"), 3, memo.wrap(method, float("inf"), 3, fed, _train(data, calls)), fed)
        assert len(calls) > 1, (method, stamp)  # trials trained again, not reused


def test_pinned_sweeps_hold_the_headline_tuning_as_main_does(tmp_path, monkeypatch):
    """The wrapper's start of a pinned sweep point is main's ``sweeps._hold_tuning``: the same unit
    stamp (the point's own settings) and the headline's choices of the sweep's methods, marked
    held_from; a headline run made with other settings, data or code is refused, not held."""
    import hfgan_core.sweeps as sw
    from hfgan_core.benchmark import BenchmarkConfig, jsonable, run_profile, runner
    from hfgan_core.errors import UserError
    write_npz(tmp_path / "data" / "pneumoniamnist.npz", classes=2)
    common = dict(dataset="pneumoniamnist", methods=sw.NONIID_METHODS, seeds=[0], profile="smoke",
                  data_dir=str(tmp_path / "data"))
    head, point = BenchmarkConfig(**common), BenchmarkConfig(**common, alpha=0.1)
    headline = tmp_path / "pneumoniamnist"
    (headline / "units").mkdir(parents=True)
    stamp = jsonable(runner._stamp(head, run_profile(head), runner._load(head, run_profile(head))))
    (headline / "units" / "stamp.json").write_text(json.dumps(stamp))
    tuning = {f"{m}|{10.0 if m == 'hfgan' else float('inf')}": {"seed": 0, "budget": 2, "inherited": {},
                                                                 "chosen": {"lr": 1e-3 * (i + 1)}}
              for i, m in enumerate(sw.NONIID_METHODS + ["fedprox"])}  # FedProx: not a sweep method
    (headline / "units" / "tuning.json").write_text(json.dumps(tuning))
    monkeypatch.setattr(sw, "_seed_units", sw._seed_units)  # the wrapper replaces it; restored after the test
    _script().hold_sweep_tuning("α = 0.5")
    sw._seed_units(headline, tmp_path / "pinned", point)
    sw._hold_tuning(headline / "units" / "tuning.json", "α = 0.5", tmp_path / "main", point)
    read = lambda root, name: json.loads((root / "units" / name).read_text())  # noqa: E731
    assert read(tmp_path / "pinned", "stamp.json") == read(tmp_path / "main", "stamp.json") != stamp
    assert read(tmp_path / "pinned", "stamp.json")["settings"]["alpha"] == 0.1
    assert read(tmp_path / "pinned", "tuning.json") == read(tmp_path / "main", "tuning.json") == {
        key: entry | {"held_from": "α = 0.5"} for key, entry in tuning.items() if not key.startswith("fedprox")}
    (headline / "units" / "stamp.json").write_text(json.dumps(stamp | {"code": "hfgan_core sha256 other"}))
    with pytest.raises(UserError, match="other settings, data or code"):
        sw._seed_units(headline, tmp_path / "other", point)
    assert not (tmp_path / "other").exists()


def test_synthetic_images_are_keyed_by_their_generators_and_draw(monkeypatch):
    """A GAN row's trials are keyed by the generators' weights hash and the sampling seed, so the same
    committed generators give the same key on a CPU that rounds their images differently; other
    generators, another draw or other labels give another key."""
    import hashlib
    from hfgan_core.benchmark import runner
    from hfgan_core.models import Generator
    mod = _script()
    monkeypatch.setattr(runner, "images_for_labels", runner.images_for_labels)  # the wrapper replaces it
    mod.tag_synthetic_images()

    def key(synthetic) -> str:
        train = lambda cfg, spec: synthetic  # noqa: E731  (as the runner's fit closes over synthetic=...)
        h = hashlib.sha256()
        mod.digest(train, h, set())
        return h.hexdigest()

    def generator(seed: int) -> Generator:
        torch.manual_seed(seed)
        return Generator(num_classes=2, channels=1, image_size=28, nz=8, ngf=4).eval()

    g, labels = generator(0), torch.tensor([0, 1, 0, 1])
    x, y = runner.images_for_labels([g], labels, 5)
    same = x + 1e-7  # the same generators' images as another CPU's rounding would give them
    same.provenance = x.provenance
    assert not torch.equal(same, x) and key([(same, y)]) == key([(x, y)])
    others = [runner.images_for_labels([generator(1)], labels, 5),   # other weights
              runner.images_for_labels([g], labels, 6),              # another draw
              runner.images_for_labels([g], labels.flip(0), 5)]      # other labels
    assert len({key([(x, y)])} | {key([o]) for o in others}) == 4
    plain = x.detach().clone()  # an untagged tensor (the hospitals' real images) is keyed by its bytes
    assert key([(plain, y)]) != key([(plain + 1e-7, y)])


def test_dpfedavg_gan_is_trained_once_per_data_config_and_stamp(tmp_path, monkeypatch):
    """A later process gets the kept DP-FedAvg-GAN back (the very weights, sigma and epsilon) instead of
    training it again; other hospitals' data, another config or another unit stamp trains anew."""
    from hfgan_core.benchmark import runner
    from hfgan_core.dpfedavg_gan import DPFedAvgGANConfig, DPFedAvgGANResult
    trained = []

    def fake_train(clients, *, num_classes, config):
        trained.append(config)
        torch.manual_seed(len(trained))  # every training: other weights, as on another CPU
        return DPFedAvgGANResult(generator=torch.nn.Linear(3, 2), noise_multiplier=1.5, epsilon=config.epsilon)

    monkeypatch.setattr(runner, "train_dpfedavg_gan", fake_train)
    mod = _script()
    mod.keep_dpfedavg_gan(_out(tmp_path))
    hospitals, cfg = [(torch.arange(6.0).view(2, 3), torch.tensor([0, 1]))], DPFedAvgGANConfig(epsilon=10.0, seed=0)
    first = runner.train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
    again = runner.train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
    assert len(trained) == 1 and again.epsilon == 10.0 and again.noise_multiplier == 1.5
    assert torch.equal(again.generator.weight, first.generator.weight)
    assert len(list((tmp_path / "gan_runs").glob("dpfedavg_gan-seed0-eps10-*.pt"))) == 1
    runner.train_dpfedavg_gan(hospitals, num_classes=2, config=DPFedAvgGANConfig(epsilon=3.0, seed=0))
    runner.train_dpfedavg_gan([(hospitals[0][0] + 1, hospitals[0][1])], num_classes=2, config=cfg)
    _out(tmp_path, '{"code": "y"}')  # the same folder, another unit stamp
    runner.train_dpfedavg_gan(hospitals, num_classes=2, config=cfg)
    assert len(trained) == 4
