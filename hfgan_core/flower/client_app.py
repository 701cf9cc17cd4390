"""A hospital as a Flower ``ClientApp``: its images, its generator G_i, its noise stream and its
accountant never leave it. It answers three messages from the server:

* ``query.register``: its dataset size N_i (public: the aggregation weight), image shape and its
  accountant's ledger before any step;
* ``train.step``: what the server asks of it for one D: ``g_step`` updates of G_i against that D
  (the last round's step (2); no real data), then ``upload``: one DP gradient of D's loss on its
  data (``client.discriminator_upload``: Poisson batch, per-example clipping, its own Gaussian
  noise, normalised), charged to its accountant. It refuses the upload, whatever the server asks,
  once its accountant says the next step would exceed its epsilon. The reply holds the G losses
  and its ledger (steps, epsilon) after the G steps, and the upload;
* ``query.release``: its privacy entry for privacy.json and a grid of synthetic images.

Everything that must survive between rounds (G_i, its optimiser and EMA, the random stream, the
ledger) lives in the ClientApp's ``context.state`` (with a ``state-dir`` in the node config, G_i's
megabytes wait in a file there on the hospital's disk, and the context holds its path and
version); the static parts (data, accountant curve, a D copy with its clipper) are rebuilt from it
when a process first sees this hospital.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import client as cl
from .. import server as sv
from ..data import load_dataset, load_split
from ..train import (TrainConfig, _budget, build_discriminator, hospital_parts, hospital_privacy, hospital_state,
                     load_hospital_state, make_clipper, make_hospital, sample_grid, selection)
from .records import blob, record_config, record_tensors, tensors_record, unblob

app = ClientApp()
_CACHE: dict[tuple, object] = {}  # per process: data, D copies (the authoritative state is the context's)
_LIVE: dict[tuple, tuple[int, cl.Client]] = {}  # (run, node) -> (state version, hospital) as this process left it
_GENERATOR_KEYS = ("generator", "ema", "g_optimizer")  # what only a G step changes (megabytes)
STATE_DIR_ENV = "HFGAN_FLOWER_STATE_DIR"  # flower-sim --state-dir: the simulated hospitals' state-dir


class Refused(Exception):
    """The hospital does not answer this message (a simulated dropout)."""


def _threads(context: Context) -> None:
    torch.set_num_threads(int(context.node_config.get("threads", 1)))


def _data(config: TrainConfig, context: Context) -> tuple[int, torch.Tensor, torch.Tensor, int]:
    """(cid, images, labels, classes): the node's own file (``data-file`` in its node config: a
    MedMNIST .npz holding only this hospital's training images), or in simulation the hospital's
    part of the shared file, split exactly as the in-process run splits it."""
    cfg = context.node_config
    cid = int(cfg["partition-id"])
    key = ("data", cfg.get("data-file"), config.dataset, config.data_dir, config.seed, config.clients,
           config.partition, config.alpha, config.min_client_size, cid)
    if key not in _CACHE:
        if cfg.get("data-file"):  # checked like any MedMNIST file; the class count is public
            x, y = load_split(str(cfg["data-file"]), "train").tensors()
            classes = int(cfg["num-classes"])
        else:
            ds = load_dataset(config.dataset, config.data_dir)
            part = hospital_parts(config, ds.train.labels)[cid]
            xs, ys = ds.train.tensors()
            x, y, classes = xs[part], ys[part], ds.num_classes
        _CACHE[key] = (cid, x.contiguous(), y.contiguous(), classes)
    return _CACHE[key]


def _hospital(config: TrainConfig, context: Context) -> cl.Client:
    """This hospital, restored from its context (built and calibrated on its first message). If
    this process handled the hospital's last message, its objects are still current: same version."""
    live = _LIVE.pop((context.run_id, context.node_id), None)  # taken: a handler that fails leaves none behind
    if live is not None and "stream" in context.state and live[0] == int(context.state["stream"]["version"]):
        return live[1]
    cid, x, y, classes = _data(config, context)
    planned = int(sv.times_selected(selection(config), config.clients)[cid]) * config.d_steps
    ledger = context.state.get("ledger")
    budget = None
    if config.private:  # calibrated on the first message; later ones restore it without calibrating again
        budget = _budget(config, len(y), planned,
                         restore=(ledger["sigma"], int(ledger["max_steps"])) if ledger is not None else None)
        context.state["ledger"] = ConfigRecord({"sigma": budget.noise_multiplier, "max_steps": budget.max_steps})
    h = make_hospital(config, cid, x, y, num_classes=classes, planned_steps=planned, budget=budget)
    if "stream" in context.state:
        load_hospital_state(h, _load_generator(context, cid) | unblob(context.state["stream"]["state"]))
    return h


def _state_dir(context: Context) -> str | None:
    """Where G_i waits between messages when not in the context: the node's ``state-dir`` (a folder
    on the hospital's own disk), or in simulation the one ``flower-sim --state-dir`` names."""
    return str(context.node_config.get("state-dir") or os.environ.get(STATE_DIR_ENV) or "") or None


def _store_generator(context: Context, cid: int, state: dict, version: int) -> None:
    """G_i, its EMA and its optimiser (megabytes): in the context, or in the state folder with
    only its path and version in the context (the context then crosses processes ~10x lighter)."""
    where = _state_dir(context)
    if where is None:
        context.state["generator"] = ConfigRecord({"state": blob(state)})
        return
    os.makedirs(where, exist_ok=True)
    # Two files, written in turn: the one the context points to is never touched, so a failed write
    # leaves the last good state. Rewriting a file in place also skips the page allocation a new
    # file costs (7 MB: 0.2 ms instead of 5 ms here).
    old = context.state.get("generator")
    slot = 1 - int(old["slot"]) if old is not None and "slot" in old else 0
    path = _generator_file(where, context, cid, slot)
    data = blob(state | {"version": version})
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    context.state["generator"] = ConfigRecord({"file": path, "version": version, "slot": slot})


def _generator_file(where: str, context: Context, cid: int, slot: int) -> str:
    return os.path.join(where, f"hfgan-run{context.run_id}-hospital{cid}-{slot}.pt")


def _load_generator(context: Context, cid: int) -> dict:
    record = context.state["generator"]
    if "file" not in record:
        return unblob(record["state"])
    path = str(record["file"])
    if not os.path.exists(path):
        raise RuntimeError(f"hospital {cid}: its generator's state {path} is gone; keep the node's state-dir for the "
                           "whole run")
    with open(path, "rb") as f:
        state = unblob(f.read())
    if int(state.pop("version")) != int(record["version"]):
        raise RuntimeError(f"hospital {cid}: {path} holds another version of its generator than its context "
                           "records; two runs share the state-dir")
    return state


def _save(h: cl.Client, context: Context, *, generator: bool = True) -> None:
    """Write what changed back to the context: the random stream and the ledger always, G_i with
    its EMA and optimiser only after G steps (``generator``)."""
    state = hospital_state(h)
    version = int(context.state["stream"]["version"]) + 1 if "stream" in context.state else 0
    if generator or "generator" not in context.state:
        _store_generator(context, h.cid, {k: state[k] for k in _GENERATOR_KEYS}, version)
    context.state["stream"] = ConfigRecord({"state": blob({k: v for k, v in state.items() if k not in _GENERATOR_KEYS}),
                                            "version": version})
    if (path := _ledger_file(context, h.cid)) is not None:  # durable: written before the reply leaves
        with open(path + ".tmp", "w") as f:
            json.dump({"steps": state["steps"], "epsilon": state["epsilon"], "version": version}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    _LIVE[(context.run_id, context.node_id)] = (version, h)


def _discriminator(config: TrainConfig, h: cl.Client, weights: ArrayRecord) -> tuple[torch.nn.Module, object]:
    """A copy of the server's D (and the clipper on it), loaded with the weights just received."""
    shape = dict(num_classes=h.generator.num_classes, channels=h.images.shape[1], image_size=h.images.shape[-1])
    key = ("D", config.nz, config.ngf, config.ndf, config.aux_weight > 0, config.max_grad_norm, config.clipped,
           config.clip_per_layer, tuple(shape.values()), config.device)
    if key not in _CACHE:
        d = build_discriminator(config, **shape)
        _CACHE[key] = (d, make_clipper(config, d, **shape))
    d, clipper = _CACHE[key]
    with torch.no_grad():
        for p, w in zip(d.state_dict().values(), record_tensors(weights, config.device)):
            p.copy_(w)
    return d, clipper


def _ledger(h: cl.Client) -> dict:
    if h.budget is None:
        return {}
    return {"steps": h.budget.steps, "epsilon": h.budget.update_epsilon()}


def _maybe_drop(msg: Message, config: TrainConfig, cid: int) -> None:
    """A simulated dropout (``serve(dropout=...)``): an independent draw per (round, step, hospital),
    from a stream that is not the hospital's, so the DP draws of the run are not disturbed."""
    rate = float(msg.content["config"].get("dropout", 0.0))
    if rate > 0:
        key = [config.seed, 71, int(msg.content["config"]["round"]), int(msg.content["config"].get("step", 0)), cid]
        if np.random.default_rng(key).random() < rate:
            raise Refused(f"hospital {cid}: simulated dropout")


def _terms(config: TrainConfig, context: Context, *, first: bool) -> None:
    """The run's settings are the hospital's terms, fixed by its first message (``register``): a later
    message with other settings (a server that lowers σ, raises ε or the batch size, or asks for
    seed-derived noise mid-run) is refused, so its accountant stays right whatever the server sends.
    A deployed hospital (its own ``data-file``) also takes part without DP, or with noise derived
    from the public seed, only if its own node config allows it (``allow-no-dp``,
    ``allow-simulation-noise``), and never above its ``max-epsilon`` if it sets one."""
    node, cid = context.node_config, int(context.node_config["partition-id"])
    sent = json.dumps(asdict(config), sort_keys=True)
    if "terms" in context.state:
        if str(context.state["terms"]["config"]) != sent:
            raise RuntimeError(f"hospital {cid}: this message's settings differ from those it registered with; "
                               "it answers no message of changed settings (its accountant was set up for those)")
        return
    if not first:  # its state went with a restarted process: a new ledger would count its spent steps from zero
        raise RuntimeError(f"hospital {cid}: its state (ledger, generator, random stream) is gone; it answers "
                           "nothing more in this run")
    if (ledger := _ledger_file(context, cid)) and os.path.exists(ledger):
        raise RuntimeError(f"hospital {cid}: its state-dir holds a ledger of this run already ({ledger}); "
                           "it registers once per run")
    if node.get("data-file"):
        if not config.private and not node.get("allow-no-dp", False):
            raise RuntimeError(f"hospital {cid}: the server asks for epsilon = inf (no DP); its node config does not "
                               "allow it (allow-no-dp=true)")
        if config.simulation_noise and not node.get("allow-simulation-noise", False):
            raise RuntimeError(f"hospital {cid}: the server asks for noise derived from the public seed; its node "
                               "config does not allow it (allow-simulation-noise=true)")
        if "max-epsilon" in node and config.epsilon > float(node["max-epsilon"]):
            raise RuntimeError(f"hospital {cid}: the server asks for epsilon = {config.epsilon}, above its "
                               f"max-epsilon = {node['max-epsilon']}")
    context.state["terms"] = ConfigRecord({"config": sent})


def _ledger_file(context: Context, cid: int) -> str | None:
    """Where a hospital with a ``state-dir`` keeps a durable copy of its ledger (steps spent), so that
    a restarted node knows it has spent them."""
    where = _state_dir(context)
    return os.path.join(where, f"hfgan-run{context.run_id}-hospital{cid}-ledger.json") if where else None


def _open(msg: Message, context: Context, *, may_drop: bool = False,
          first: bool = False) -> tuple[TrainConfig, cl.Client]:
    """Every handler starts here: its threads, the run's settings (checked against the hospital's
    terms), this hospital restored from its context (and, in a fault test, a simulated dropout
    before it touches anything)."""
    _threads(context)
    config = record_config(msg.content["config"])
    _terms(config, context, first=first)
    h = _hospital(config, context)
    if may_drop:
        _maybe_drop(msg, config, h.cid)
    return config, h


def _reply(msg: Message, **records) -> Message:
    return Message(RecordDict(records), reply_to=msg)


@app.query("register")
def register(msg: Message, context: Context) -> Message:
    config, h = _open(msg, context, first=True)
    _save(h, context)
    return _reply(msg, info=MetricRecord({"cid": h.cid, "n_examples": h.n_examples, "channels": h.images.shape[1],
                                          "image_size": h.images.shape[-1], "num_classes": h.generator.num_classes,
                                          **_ledger(h)}))


@app.train("step")
def step(msg: Message, context: Context) -> Message:
    """(2) of the last round, then (1) of this one, as the message asks, in the reference loop's
    order: G_i's steps against the D received (no real data), then the hospital's DP gradient of
    L_D for that same D. Refusing the upload (its epsilon) does not undo the G steps."""
    config, h = _open(msg, context, may_drop=True)
    asked = msg.content["config"]
    d, clipper = _discriminator(config, h, msg.content["d"])
    records = {}
    if asked["g_step"]:
        losses = [cl.generator_step(h, d, batch_size=config.batch_size, objective=config.objective)
                  for _ in range(config.g_steps)]
        records["g"] = MetricRecord(({"g_losses": losses} if losses else {}) | _ledger(h))
    if asked["upload"]:
        if h.budget is not None and not h.budget.can_spend(1):
            records["refused"] = ConfigRecord({"reason": f"hospital {h.cid}: one more step would exceed epsilon = "
                                                         f"{config.epsilon} (delta = {config.delta}); it uploads "
                                                         "nothing more"})
        else:
            grads, loss_fake = cl.discriminator_upload(h, d, clipper, batch_size=config.batch_size,
                                                       max_grad_norm=config.max_grad_norm,
                                                       objective=config.objective, fakes=config.n_fakes)
            if h.budget is not None:
                h.budget.spend()
            records |= {"upload": tensors_record(grads), "metrics": MetricRecord({"loss_fake": loss_fake})}
    _save(h, context, generator=bool(asked["g_step"]))
    return _reply(msg, **records)


@app.query("release")
def release(msg: Message, context: Context) -> Message:
    """The end of the run: the released (EMA) generator gets standing BatchNorm statistics, and
    the hospital sends its privacy entry and a grid of synthetic images (nothing else)."""
    config, h = _open(msg, context)
    if h.budget is not None:
        h.budget.update_epsilon()
    cl.standing_bn_stats(h.sampler, seed=config.seed)
    _save(h, context)
    entry = json.dumps(hospital_privacy(h), default=str)
    out = context.node_config.get("out-dir")
    if out:  # the hospital keeps its released generator on its own disk
        os.makedirs(str(out), exist_ok=True)
        torch.save({k: v.cpu() for k, v in h.sampler.state_dict().items()},
                   os.path.join(str(out), f"generator_hospital{h.cid}.pt"))
    if "file" in context.state["generator"]:  # the run is over: its working copies go (the released one is in out-dir)
        for slot in (0, 1):
            path = _generator_file(os.path.dirname(str(context.state["generator"]["file"])), context, h.cid, slot)
            if os.path.exists(path):
                os.remove(path)
    return _reply(msg, privacy=ConfigRecord({"entry": entry}), grid=tensors_record([sample_grid(h.sampler)]))
