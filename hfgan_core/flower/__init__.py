"""HF-GAN on Flower: each hospital a ``ClientApp`` on its own machine, D on the ``ServerApp``.

The method is not implemented twice: a hospital's ClientApp builds itself with
``train.make_hospital`` and answers with the same library functions the in-process reference
loop calls (``client.discriminator_upload``, ``client.generator_step``); the ServerApp
aggregates with ``server.aggregate`` and writes the same files as ``python -m hfgan_core train``.

* ``records``: tensors, states and configs in and out of Flower's records;
* ``client_app``: the hospital (its images, G_i, its noise stream and its accountant, kept in
  the ClientApp's context between rounds);
* ``server_app``: D, its Adam state, hospital selection, aggregation, outputs, dropouts;
* ``simulation``: ``python -m hfgan_core flower-sim`` (Flower's simulation runtime).

Flower's own DP wrappers (``DifferentialPrivacyClientSideFixedClipping`` and friends) clip each
client's whole model update and report no epsilon: that is client-level DP of a FedAvg update.
HF-GAN's guarantee is per record, from per-example clipping and noise inside the hospital's D
gradient, accounted by the hospital itself, so those wrappers are not used.
"""
