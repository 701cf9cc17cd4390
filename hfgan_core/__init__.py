"""HF-GAN core: Hybrid Federated GANs with a DP federated discriminator and local generators.

One module per concept: ``data`` (MedMNIST-format files), ``partition`` (non-IID hospitals),
``models``, ``clipping`` (per-example clipping), ``privacy`` (accounting and noise), ``client``
and ``server`` (one round's steps), ``train`` (the loop), ``evaluate`` / ``classifier`` /
``metrics`` (judging the generators). ``python -m hfgan_core train --help`` is the command line.
"""

__version__ = "0.1.0"
