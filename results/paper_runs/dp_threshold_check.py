"""Side check (not a result): is chest X-ray's DP classifier on the majority class because of its
decision threshold? It trains nothing: it reads the finished rows' saved test probabilities
(units/row-*.npy) and the data file, and for each row prints accuracy and balanced accuracy at the
0.5 threshold, after a prior correction fixed in advance (p(y|x) / pi_train(y), renormalised: the
pooled training prior, nothing fitted), and at the best threshold on the test split itself
(an oracle: a diagnostic of how well the scores separate, never a number to report as a result),
with the spread of the predicted pneumonia probability. Run from the repository root:
.venv/bin/python results/paper_runs/dp_threshold_check.py [data/pneumoniamnist.npz]
Output: dp_threshold_check.json beside this file."""
import json, sys
from pathlib import Path
import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

HERE = Path(__file__).parent / "pneumoniamnist"
ROWS = {  # label -> unit file stem (DP classifier rows, the clipping-only control and FedAvg for reference)
    "dp_fedavg seed 0 (table row)": "units/row-dp_fedavg-0-10.0",
    "dp_fedavg seed 1 (table row)": "units/row-dp_fedavg-1-10.0",
    "dp_fedavg seed 0 (recipe point, to the cap)": "dp_recipe/units/row-dp_fedavg-0-10.0",
    "dp_fedavg_clip seed 0 (sigma = 0)": "units/row-dp_fedavg_clip-0-inf",
    "fedavg seed 0": "units/row-fedavg-0-inf",
    "fedavg seed 1": "units/row-fedavg-1-inf",
}


def scores(y: np.ndarray, p1: np.ndarray, prior: float) -> dict:
    """Accuracy and balanced accuracy of pneumonia probabilities p1 at three decision rules."""
    adjusted = (p1 / prior) / (p1 / prior + (1 - p1) / (1 - prior))
    grid = np.quantile(p1, np.linspace(0, 1, 401))
    oracle = max(float(((p1 > t) == y).mean()) for t in grid)
    return {"accuracy": float(((p1 > 0.5) == y).mean()), "balanced_accuracy": balanced_accuracy_score(y, p1 > 0.5),
            "prior_corrected_accuracy": float(((adjusted > 0.5) == y).mean()),
            "prior_corrected_balanced_accuracy": balanced_accuracy_score(y, adjusted > 0.5),
            "oracle_threshold_accuracy": oracle, "auc": roc_auc_score(y, p1),
            "p_pneumonia_quantiles_0_10_50_90": np.quantile(p1, [0, 0.1, 0.5, 0.9]).round(3).tolist()}


data = np.load(sys.argv[1] if len(sys.argv) > 1 else "data/pneumoniamnist.npz")
y, prior = data["test_labels"].ravel(), float(data["train_labels"].mean())
out = {"train_prior_pneumonia": prior, "test_prior_pneumonia": float(y.mean()), "rows": {}}
for label, stem in ROWS.items():
    p = np.load(HERE / f"{stem}.npy")[0]  # (1, N, classes): the row's test probabilities
    out["rows"][label] = r = scores(y, p[:, 1], prior)
    print(f"{label:45s} acc {r['accuracy']:.3f} bal {r['balanced_accuracy']:.3f} | prior-corrected "
          f"{r['prior_corrected_accuracy']:.3f} bal {r['prior_corrected_balanced_accuracy']:.3f} | oracle "
          f"{r['oracle_threshold_accuracy']:.3f} | AUC {r['auc']:.3f} | p quantiles {r['p_pneumonia_quantiles_0_10_50_90']}")
(Path(__file__).parent / "dp_threshold_check.json").write_text(json.dumps(out, indent=1) + "\n")
