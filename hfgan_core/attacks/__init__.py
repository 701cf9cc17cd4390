"""Measuring what the noise buys: attacks on HF-GAN's outputs and an empirical privacy audit.

- ``inversion``: the server rebuilds a hospital's images from its upload (gradient inversion);
- ``membership``: was this record in training? asked of the released D (LOGAN) and of the
  released generators (GAN-Leaks), with ROC AUC and TPR at 1 % FPR;
- ``audit``: a lower bound on the run's true epsilon from canaries planted in one training run;
- ``experiment``: all three over epsilon and seeds on the same training runs: table 4.
"""
from .audit import CanaryAudit, audit_epsilon, audit_p_value, best_guesses, epsilon_lower_bound
from .inversion import invert_upload, reconstruction_quality
from .membership import attack_summary, discriminator_membership_scores, generator_membership_scores

__all__ = ["CanaryAudit", "attack_summary", "audit_epsilon", "audit_p_value", "best_guesses",
           "discriminator_membership_scores", "epsilon_lower_bound", "generator_membership_scores",
           "invert_upload", "reconstruction_quality"]
