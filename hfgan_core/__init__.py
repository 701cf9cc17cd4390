"""HF-GAN core: Hybrid Federated GANs with a DP federated discriminator and local generators.

One module per concept: ``data`` (MedMNIST-format files), ``partition`` (non-IID hospitals),
``models``, ``device`` (the --device check; float32 kept exact on GPUs), ``clipping``
(per-example clipping), ``privacy`` (accounting and noise), ``client`` and ``server`` (one
round's steps, hospital by hospital), ``engine`` (the same round for all hospitals at once),
``train`` (the loop, outputs, resume), ``synthesis`` (images and synthetic datasets from the
generators), ``quality`` / ``gan_quality`` / ``classifier`` / ``metrics`` (judging the
generators on validation data). ``python -m hfgan_core train --help`` is the command line.
"""

__version__ = "0.1.0"
