"""The benchmark as jobs that run side by side (``--workers N``).

One row trains a small model: a GPU runs it mostly idle (the host launching kernels is the
bottleneck, README "Speed"), and a one-threaded run leaves the other CPU cores idle. So a parallel
run splits the benchmark into jobs, one seed's row of one method at one epsilon (HF-GAN's three
rows share one GAN: one job), and runs them in worker processes. Each job writes its results as
units (``units``); the run then assembles its tables from them as a resumed run does, training
nothing. A row comes out as it would in one process: it depends on its seed, its hospitals and
its tuned point, never on which rows ran before it in the same process.

Jobs wait for the choices they read (``tuning``): a method is tuned on the first seed and the
other seeds reuse its choice; FedProx and augmentation start from FedAvg's choice, the equal-steps
control from HF-GAN's at the headline epsilon.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .config import METHODS, PRIVATE_ROWS, BenchmarkConfig, private_rows, run_profile
from .tuning import INHERIT


@dataclass(frozen=True)
class Job:
    seed: int
    methods: tuple[str, ...]  # one method, or the rows that share one GAN
    epsilon: float | None  # the private rows' epsilon; None: rows without DP
    needs: tuple[int, ...] = ()  # jobs (indices in the plan) whose tuning choices this one reads

    def config(self, c: BenchmarkConfig) -> BenchmarkConfig:
        """The job as a benchmark of its own: its rows on its seed. Rows without DP keep the run's
        epsilons (the equal-steps control inherits from HF-GAN's row at the first of them)."""
        eps = c.epsilons if self.epsilon is None else [self.epsilon]
        return replace(c, methods=list(self.methods), seeds=[self.seed], epsilons=eps, curve_epsilons=[])

    def __str__(self) -> str:
        at = "" if self.epsilon is None else f" eps={self.epsilon}"
        return f"seed {self.seed}{at} {'+'.join(self.methods)}"


def plan(c: BenchmarkConfig) -> list[Job]:
    """Every job of the run, each after the jobs it waits for (the first seed's come first)."""
    prof = run_profile(c)
    jobs: list[Job] = []
    where: dict[tuple, int] = {}  # (seed, method, epsilon) -> index of the job that makes the row

    def add(seed: int, methods: list[str], eps: float | None, needs: list[tuple]) -> None:
        if methods:
            where.update({(seed, m, eps): len(jobs) for m in methods})
            jobs.append(Job(seed, tuple(methods), eps, tuple(where[n] for n in needs if n in where)))

    first = c.seeds[0]  # the seed every (method, epsilon) is tuned on
    hf_eps = c.epsilons[0]
    for seed in c.seeds:
        for eps, wanted in private_rows(c, prof, seed):
            hf = [m for m in wanted if METHODS[m].gan == "hfgan"]
            for group in [hf] + [[m] for m in wanted if m not in hf]:
                add(seed, group, eps, [(first, group[0], eps)] if seed != first else [])
        for m in [m for m in METHODS if m in c.methods and m not in PRIVATE_ROWS]:
            parent = [] if m not in INHERIT else [(first, INHERIT[m][0], None if INHERIT[m][0] not in PRIVATE_ROWS
                                                   else hf_eps)]
            add(seed, [m], None, [(first, m, None)] if seed != first else parent)
    return jobs


def run_jobs(c: BenchmarkConfig, out: str | Path, *, workers: int, threads: int | None = None,
             resume: bool = False, echo: bool = True) -> None:
    """Run every job of ``plan`` in ``workers`` processes (spawned: CUDA and torch's threads survive
    no fork), each with ``threads`` torch threads (default: the cores shared out). ``resume``: the
    run continues an earlier one (its GAN run folders may be reused). The first error stops the
    run: the other jobs are ended, their finished units kept (``--resume`` continues)."""
    from .runner import run_job
    jobs = plan(c)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    if echo:
        print(f"[{c.dataset}] {len(jobs)} jobs in {workers} worker processes, {threads} torch thread(s) each",
              flush=True)
    results: queue.Queue = queue.Queue()
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,))
    main = threading.current_thread() is threading.main_thread()
    was = signal.signal(signal.SIGTERM, _stop) if main else None  # `timeout` or a scheduler: end the jobs too
    try:
        todo, running, started = set(range(len(jobs))), set(), time.time()
        while todo or running:
            for i in sorted(i for i in todo if not set(jobs[i].needs) & (todo | running)):
                todo.remove(i)
                running.add(i)
                pool.apply_async(run_job, (jobs[i].config(c), str(out)), {"resume": resume, "echo": echo},
                                 callback=lambda _, i=i: results.put((i, None)),
                                 error_callback=lambda e, i=i: results.put((i, e)))
            i, error = results.get()
            running.remove(i)
            if error is not None:
                raise error
            if echo:
                print(f"[{c.dataset}] job {len(jobs) - len(todo) - len(running)}/{len(jobs)} done: {jobs[i]} "
                      f"({time.time() - started:.0f} s into the run)", flush=True)
        pool.close()
    finally:
        pool.terminate()  # after an error or an interrupt: no job outlives the run
        pool.join()
        if main:
            signal.signal(signal.SIGTERM, was)


def _stop(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
