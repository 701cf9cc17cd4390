"""The server as a Flower ``ServerApp``: D and its Adam state, the hospital selection, the
size-weighted average of the hospitals' DP uploads, and the run's files.

Each round mirrors ``train.train_round`` (the in-process reference):
  (1) ``d_steps`` times: send D to the selected hospitals, receive each one's DP gradient,
      ``server.aggregate`` them by N_i over the hospitals that answered, take an Adam step;
  (2) the selected hospitals step their G_i against the new D.
D does not change between (2) of round r and the first D step of round r + 1, so one message
carries both: "G step for round r" and "upload for round r + 1" (a hospital does them in that
order, as in the reference loop). Each round is then ``d_steps`` round trips instead of
``d_steps + 1``, with the same numbers; the last round's G steps go in one final message.
A hospital that fails, refuses or does not answer in time is skipped for that message (its
accountant is not charged: it took no step) and the metrics line of every round the message
served lists it under ``dropped``. The server never holds an image, a label or an un-noised gradient; at the end the
hospitals send their privacy entries and grids of synthetic images, nothing else.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from .. import server as sv
from ..errors import UserError
from ..train import (TrainConfig, _versions, build_discriminator, check_config, metrics_line, save_grid, selection,
                     write_privacy_report)
from .records import config_record, record_tensors, tensors_record

REPLY_TIMEOUT_S = 300.0  # a hospital that has not answered by then is a straggler for that step


def serve(grid: Grid, config: TrainConfig, out: str | Path, *, dropout: float = 0.0,
          timeout: float = REPLY_TIMEOUT_S) -> dict:
    """Run HF-GAN over the hospitals on ``grid``; writes config.json, metrics.jsonl, privacy.json,
    timing.json and samples_client<i>.png under ``out``. ``dropout``: each hospital fails each
    message with this probability (a test of the fault path)."""
    check_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if hasattr(grid, "pull_interval"):  # the simulation's in-memory grid polls for replies every 0.1 s by default
        grid.pull_interval = 0.005
    nodes, info = _register(grid, config, timeout)
    sizes = {cid: int(m["n_examples"]) for cid, m in info.items()}
    ledgers = {cid: (int(m["steps"]), float(m["epsilon"])) for cid, m in info.items() if "steps" in m}
    first = info[0]
    d = build_discriminator(config, num_classes=int(first["num_classes"]), channels=int(first["channels"]),
                            image_size=int(first["image_size"]))  # exactly as the in-process run builds it
    d_opt = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=(config.beta1_d, config.beta2))
    schedule = selection(config)
    _write_config(config, out, sizes, first)
    started, rounds, traffic = time.perf_counter(), 0, {"sent": 0, "received": 0}
    owed: Owed | None = None  # the last round, until its G steps have been answered
    with (out / "metrics.jsonl").open("w") as log:
        for r, chosen in enumerate(schedule):
            d_fake, dropped = [], set()
            for step in range(config.d_steps):  # (1) update D with the hospitals' DP gradients
                g_now = owed.chosen if step == 0 and owed is not None else []  # (2) of the last round rides along
                replies = _ask(grid, nodes, chosen, g_now, d, config, r, step, dropout, timeout, traffic)
                if g_now:
                    log.write(_round_line(owed, replies, ledgers) + "\n")
                    log.flush()
                answered = [cid for cid in chosen if "upload" in replies.get(cid, {})]
                dropped |= set(chosen) - set(answered)
                if answered:
                    uploads = [record_tensors(replies[cid]["upload"], config.device) for cid in answered]
                    sv.apply_gradient(d, d_opt, sv.aggregate(uploads, [sizes[cid] for cid in answered]))
                d_fake += [float(replies[cid]["metrics"]["loss_fake"]) for cid in answered]
            owed = Owed(r, chosen, d_fake, dropped)
            rounds = r + 1
        if owed is not None:  # (2) of the last round
            replies = _ask(grid, nodes, [], owed.chosen, d, config, len(schedule), 0, dropout, timeout, traffic)
            log.write(_round_line(owed, replies, ledgers) + "\n")
    train_s = time.perf_counter() - started
    return _release(grid, nodes, config, out, rounds, train_s, timeout, traffic)


def _register(grid: Grid, config: TrainConfig, timeout: float) -> tuple[dict[int, int], dict[int, dict]]:
    """Wait for the hospitals' nodes, ask each for its id and size: {cid: node}, {cid: info}."""
    deadline = time.time() + timeout
    while len(list(grid.get_node_ids())) < config.clients:
        if time.time() > deadline:
            raise UserError(f"only {len(list(grid.get_node_ids()))} of {config.clients} hospitals connected within "
                            f"{timeout:.0f} s; start every SuperNode or lower --clients")
        time.sleep(0.1)
    nodes, info = {}, {}
    for reply in _query(grid, grid.get_node_ids(), "query.register", config, timeout):
        if reply.has_error():
            raise UserError(f"a hospital failed to set up: {reply.error.reason.strip().splitlines()[-1]}")
        m = dict(reply.content["info"])
        nodes[int(m["cid"])], info[int(m["cid"])] = reply.metadata.src_node_id, m
    if sorted(nodes) != list(range(config.clients)):
        raise UserError(f"the hospitals answered as {sorted(nodes)}; expected partition ids 0..{config.clients - 1}")
    return nodes, info


@dataclass
class Owed:
    """A round whose D steps are done and whose G steps ride on the next message."""
    round: int
    chosen: list[int]
    d_fake: list[float]
    dropped: set[int]


def _round_line(owed: Owed, replies: dict[int, RecordDict], ledgers: dict[int, tuple[int, float]]) -> str:
    """The round's metrics line, once its G steps have been answered (losses, ledgers)."""
    g_losses, dropped = [], set(owed.dropped)
    for cid in owed.chosen:  # (2) each G_i against the new D
        if "g" not in replies.get(cid, {}):
            dropped.add(cid)
            continue
        m = replies[cid]["g"]
        g_losses += list(m.get("g_losses", []))
        if "steps" in m:
            ledgers[cid] = (int(m["steps"]), float(m["epsilon"]))
    line = metrics_line(owed.round + 1, owed.chosen, float(np.mean(owed.d_fake)) if owed.d_fake else math.nan,
                        g_losses, ledgers)
    if dropped:
        line["dropped"] = sorted(dropped)
    return json.dumps(line)


def _ask(grid: Grid, nodes: dict[int, int], upload: list[int], g_step: list[int], d: torch.nn.Module,
         config: TrainConfig, round_: int, step: int, dropout: float, timeout: float,
         traffic: dict) -> dict[int, RecordDict]:
    """Send D to the hospitals that owe a G step against it (``g_step``) or an upload for it
    (``upload``), one message each; {cid: reply content} of those that answered without error.
    ``traffic`` counts the arrays' bytes each way (D out, uploads back)."""
    weights = tensors_record(list(d.state_dict().values()))
    targets = sorted(set(upload) | set(g_step))
    traffic["sent"] += weights.count_bytes() * len(targets)
    messages = [Message(RecordDict({"d": weights, "config": config_record(
        config, round=round_, step=step, dropout=dropout, upload=cid in upload, g_step=cid in g_step)}),
        dst_node_id=nodes[cid], message_type="train.step", group_id=str(round_ + 1)) for cid in targets]
    by_node = {node: cid for cid, node in nodes.items()}
    replies = {by_node[r.metadata.src_node_id]: r.content for r in grid.send_and_receive(messages, timeout=timeout)
               if not r.has_error()}
    traffic["received"] += sum(c["upload"].count_bytes() for c in replies.values() if "upload" in c)
    return replies


def _query(grid: Grid, nodes, kind: str, config: TrainConfig, timeout: float):
    """One ``kind`` message with the run's settings to every node; their replies."""
    messages = [Message(RecordDict({"config": config_record(config)}), dst_node_id=node, message_type=kind)
                for node in nodes]
    return grid.send_and_receive(messages, timeout=timeout)


def _release(grid: Grid, nodes: dict[int, int], config: TrainConfig, out: Path, rounds: int, train_s: float,
             timeout: float, traffic: dict) -> dict:
    by_node = {node: cid for cid, node in nodes.items()}
    entries = {}
    for reply in _query(grid, nodes.values(), "query.release", config, timeout):
        if reply.has_error():
            continue
        cid = by_node[reply.metadata.src_node_id]
        entries[cid] = json.loads(reply.content["privacy"]["entry"])
        save_grid(record_tensors(reply.content["grid"])[0], out / f"samples_client{cid}.png")
    missing = sorted(set(nodes) - set(entries))
    if missing:
        print(f"hospitals {missing} did not send their privacy entries; privacy.json lists the others")
    (out / "timing.json").write_text(json.dumps({"rounds_completed": rounds, "train_s": train_s,
                                                 "device": config.device, "runtime": "flower",
                                                 "array_bytes_sent": traffic["sent"],
                                                 "array_bytes_received": traffic["received"]}))
    return write_privacy_report(config, rounds, entries, out)


def _write_config(config: TrainConfig, out: Path, sizes: dict[int, int], first: dict) -> None:
    """config.json as ``train`` writes it; the dataset's shape as the hospitals reported it."""
    info = {"config": asdict(config),
            "dataset": {"name": config.dataset, "image_size": int(first["image_size"]),
                        "channels": int(first["channels"]), "num_classes": int(first["num_classes"])},
            "client_sizes": [sizes[cid] for cid in sorted(sizes)], "versions": _versions(), "runtime": "flower"}
    (out / "config.json").write_text(json.dumps(info, indent=2))


RUN_CONFIG_KEYS = ("dataset", "clients", "epsilon", "seed", "rounds")  # pyproject's [tool.flwr.app.config]


def config_from_run_config(run_config: dict) -> tuple[TrainConfig, Path, float]:
    """``[tool.flwr.app.config]`` (or ``flwr run --run-config``): a few TrainConfig fields by name
    (dashes for underscores; ``rounds = 0``: the recipe's), any other in ``settings`` (a JSON
    object), plus ``out`` and ``dropout``."""
    names = {f.name for f in fields(TrainConfig)}
    try:
        values = json.loads(str(run_config.get("settings") or "{}"))
    except json.JSONDecodeError as exc:
        raise UserError(f"run config 'settings' is not a JSON object ({exc})") from None
    values |= {k.replace("-", "_"): v for k, v in run_config.items() if k not in ("settings", "out", "dropout")}
    unknown = set(values) - names
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(sorted(unknown))}; use TrainConfig's field names")
    if values.get("rounds") == 0:
        values["rounds"] = None
    if "epsilon" in values:
        values["epsilon"] = float(values["epsilon"])  # "inf" in TOML is a string
    return (TrainConfig(**values), Path(str(run_config.get("out") or "results/runs/flower")),
            float(run_config.get("dropout", 0.0)))


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .`` and the deployment: settings from the run config."""
    config, out, dropout = config_from_run_config(dict(context.run_config))
    serve(grid, config, out, dropout=dropout)


def make_server_app(config: TrainConfig, out: str | Path, *, dropout: float = 0.0,
                    timeout: float = REPLY_TIMEOUT_S) -> ServerApp:
    """A ServerApp bound to these settings (the simulation runtime takes app objects)."""
    bound = ServerApp()

    @bound.main()
    def _main(grid: Grid, context: Context) -> None:
        serve(grid, config, out, dropout=dropout, timeout=timeout)
    return bound
