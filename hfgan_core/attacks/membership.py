"""Membership inference: against the released generators (GAN-Leaks, Chen et al. 2020: a training
record lies nearer the synthetic images than a record the GAN never saw) and against the released
discriminator (LOGAN, Hayes et al. 2019: D scores its training records as "real" more
confidently), and the statistics every attack reports (ROC AUC, TPR at a low FPR)."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ..quality import nearest_distances


def generator_membership_scores(records: torch.Tensor, synthetic: torch.Tensor) -> np.ndarray:
    """GAN-Leaks, full black-box: minus each record's pixel distance to its nearest synthetic
    image (higher = more likely a training member)."""
    return -nearest_distances(records, synthetic)


@torch.no_grad()
def discriminator_membership_scores(discriminator: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                                    batch: int = 512) -> np.ndarray:
    """LOGAN, white-box: D's real/fake logit for each (image, label) (higher = more likely a member)."""
    device = next(discriminator.parameters()).device
    return torch.cat([discriminator(images[i:i + batch].to(device), labels[i:i + batch].to(device)).cpu()
                      for i in range(0, len(images), batch)]).numpy()


def attack_summary(members: np.ndarray, nonmembers: np.ndarray, *, fpr: float = 0.01) -> dict[str, float]:
    """ROC AUC of member vs non-member scores, and the share of members above the score that only
    a fraction ``fpr`` of non-members exceed (TPR at that FPR; 0.01 at random guessing)."""
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    threshold = np.quantile(nonmembers, 1 - fpr, method="higher")
    return {"auc": float(roc_auc_score(labels, np.concatenate([members, nonmembers]))),
            "tpr_at_fpr": float(np.mean(members > threshold)), "fpr": fpr,
            "members": len(members), "nonmembers": len(nonmembers)}
