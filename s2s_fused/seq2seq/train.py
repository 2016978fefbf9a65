"""The training loop: teacher-forced steps over bucketed, shuffled batches, validation on the dev set after every
epoch, the best checkpoint by dev BLEU, early stopping, a learning-rate schedule, and resuming: on one process or,
under ``torchrun --nproc_per_node=N``, with DistributedDataParallel (gloo on CPU, nccl on CUDA), every rank training
on its shard of each epoch.

Resuming is exact: ``last.pt`` holds everything the next step depends on (weights, optimizer and scheduler state,
the RNG states, the epoch and the position in it; an epoch's batch order is a function of the seed and the epoch),
so an interrupted run continued with ``--resume`` ends with the weights an uninterrupted one has, bit for bit on
CPU with the same threads. SIGINT (Ctrl-C) lets the running step finish, writes ``last.pt`` and exits."""
from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import sys
import threading
import time

import torch

from .data import Vocab, shard_batches


class Dist:
    """The process group ``torchrun`` describes in the environment (none: one process, rank 0)."""

    def __init__(self, device_kind: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled:
            import torch.distributed as dist

            if device_kind == "cuda":
                torch.cuda.set_device(self.local_rank % torch.cuda.device_count())  # NCCL uses the current one
            dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self):
        if self.enabled:
            import torch.distributed as dist

            dist.destroy_process_group()


def train_step(model, loss_fn, optimizer, batch, clip: float, bos: int = Vocab.bos):
    """One teacher-forced step; returns (summed token CE as a tensor, number of target tokens)."""
    src, src_len, tgt, tgt_len = batch
    dec_in = torch.cat([torch.full_like(tgt[:, :1], bos), tgt[:, :-1]], 1)
    logits = model(src, src_len, dec_in)
    per_seq = loss_fn(logits, tgt, tgt_len)                  # (B,): masked CE summed over steps / T
    n_tok = tgt_len.sum()
    token_sum = per_seq.sum() * tgt.shape[1]
    optimizer.zero_grad(set_to_none=True)
    (token_sum / n_tok.clamp(min=1)).backward()                # mean CE per target token
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return token_sum.detach(), n_tok


class Adam(torch.optim.Adam):
    """torch's Adam on its fused kernel (one pass over all parameters: 0.6 ms a step for the default model against
    2.6 ms for the default per-tensor loop, 1 thread, AMD EPYC; the train command's and its speed comparison's
    optimiser on both backends). The fused kernel writes the parameters without moving their version counters,
    which caches of values derived from the weights rely on (the CPU ops' packed weights, csrc/cpu/cpu_path.h):
    step() moves them."""

    def __init__(self, params, lr: float):
        super().__init__(params, lr=lr, fused=True)

    def step(self, closure=None):
        loss = super().step(closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        torch.autograd.graph.increment_version(p)
        return loss


def trim_target(batch):
    """Drop the target columns that are padding in every row: the decoder then runs max(tgt_len) steps, not
    num_steps. Exact: outputs at step t never depend on later steps, and the token sum of the loss is the same.
    (The source is not trimmed: the encoder's final state would then depend on the batch's padding.)"""
    src, src_len, tgt, tgt_len = batch
    t = max(int(tgt_len.max()), 1) if len(tgt_len) else tgt.shape[1]
    return src, src_len, tgt[:, :t], tgt_len


@dataclasses.dataclass
class TrainLog:
    step_losses: list[tuple[int, float]]   # (step, mean CE per target token of that batch)
    epochs: list[dict]                     # per epoch: epoch, train_loss, dev_loss, dev_bleu, dev_chrf, lr, seconds
    steps: int
    tokens_per_s: float                    # target tokens per second of step time (this process's shard)
    best_epoch: int | None                 # the epoch of checkpoint.pt (best dev BLEU)
    stopped_early: bool


PLATEAU_EPOCHS = 3


def make_scheduler(optimizer, args):
    """``args.lr_schedule``: None (constant), ReduceLROnPlateau on dev BLEU (stepped per epoch) or a LambdaLR with
    linear warm-up then inverse square root decay (stepped per batch)."""
    if args.lr_schedule == "plateau":
        # Halve the lr after PLATEAU_EPOCHS epochs without a better dev BLEU: greedy BLEU on a small dev set swings
        # by a few points from epoch to epoch, so one bad epoch is no sign of a plateau.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=PLATEAU_EPOCHS - 1)
    if args.lr_schedule == "warmup-inverse-sqrt":
        w = args.warmup_steps

        def factor(step):  # step counts from 0: the first update uses lr / w
            s = step + 1
            return min(s / w, math.sqrt(w / s))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return None


def _rng_state(device) -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def run_args_entry(args) -> dict:
    """The options of a run as plain values (saved in last.pt, read back by ``--resume``)."""
    return {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in vars(args).items()
            if isinstance(v, (str, int, float, bool, type(None), os.PathLike)) and not k.startswith("_")}


class Trainer:
    """Trains ``model`` on ``corpus`` as ``args`` says; ``validate(model) -> {"dev_loss", "dev_bleu", "dev_chrf"}``
    runs after every epoch (dev BLEU None without dev sources: every epoch is then the best). Rank 0 writes
    ``args.out``/``last.pt`` every epoch (and on SIGINT), ``checkpoint.pt`` when dev BLEU improves, and
    ``epoch-N.pt`` for the last ``args.keep_last`` epochs."""

    def __init__(self, model, loss_fn, corpus, args, device, dist: Dist, validate):
        self.model, self.loss_fn, self.corpus, self.args = model, loss_fn, corpus, args
        self.device, self.dist, self.validate = device, dist, validate
        self.train_model = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = Adam(model.parameters(), lr=args.lr)
        self.scheduler = make_scheduler(self.optimizer, args)
        self.epoch, self.batch, self.step = 0, 0, 0       # epochs done, batches done in the current epoch
        self.ep_sum, self.ep_tok, self.ep_seconds = 0.0, 0, 0.0
        self.tok_total, self.train_time = 0, 0.0
        self.step_losses: list = []
        self.history: list = []
        self.best_bleu, self.best_epoch, self.bad_epochs = None, None, 0
        self.best_model = None
        self.stopped_early = False
        self._stop_requested = False

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "ep_sum": self.ep_sum,
                "ep_tok": self.ep_tok, "ep_seconds": self.ep_seconds, "tok_total": self.tok_total,
                "train_time": self.train_time, "step_losses": [list(x) for x in self.step_losses],
                "history": [dict(h) for h in self.history], "best_bleu": self.best_bleu,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "best_model": self.best_model,
                "stopped_early": self.stopped_early, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": _rng_state(self.device), "args": run_args_entry(self.args),
                "data_fingerprint": self.corpus.fingerprint}

    def load_state_dict(self, st: dict) -> None:
        self.epoch, self.batch, self.step = st["epoch"], st["batch"], st["step"]
        self.ep_sum, self.ep_tok, self.ep_seconds = st["ep_sum"], st["ep_tok"], st["ep_seconds"]
        self.tok_total, self.train_time = st["tok_total"], st["train_time"]
        self.step_losses = [tuple(x) for x in st["step_losses"]]
        self.history = [dict(h) for h in st["history"]]
        self.best_bleu, self.best_epoch, self.bad_epochs = st["best_bleu"], st["best_epoch"], st["bad_epochs"]
        self.best_model, self.stopped_early = st["best_model"], st["stopped_early"]
        self.optimizer.load_state_dict(st["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"], self.device)

    def _save(self, filename, *, train_state=False, info=None):
        from .checkpoint import save_checkpoint

        c = self.corpus
        return save_checkpoint(self.args.out, self.model, c.src_vocab, c.tgt_vocab, info,
                               segmenters=(c.src_seg, c.tgt_seg),
                               train_state=self.state_dict() if train_state else None, filename=filename)

    def save_last(self):
        if self.dist.main:
            self._save("last.pt", train_state=True, info={"epoch": self.epoch, "batch": self.batch})

    # ---------------------------------------------------------------- loop
    def _batches(self, epoch):
        c, a = self.corpus, self.args
        lengths = c.src_len + c.tgt_len if a.batch_tokens else c.tgt_len
        return shard_batches(len(c.src), a.batch_size, epoch=epoch, seed=a.seed, rank=self.dist.rank,
                             world_size=self.dist.world, lengths=lengths, batch_tokens=a.batch_tokens)

    def _on_sigint(self, signum, frame):
        self._stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

    def _interrupt(self):
        self.save_last()
        if self.dist.main:
            print(f"\ninterrupted at epoch {self.epoch + 1}, batch {self.batch}: wrote {self.args.out / 'last.pt'}; "
                  f"continue with: python -m s2s_fused train --resume {self.args.out}", file=sys.stderr)
        raise KeyboardInterrupt

    def fit(self) -> TrainLog:
        # The handler lets the running step finish; under torchrun the ranks could stop at different steps and
        # hang in a collective, so there Ctrl-C stops as usual (last.pt of the last epoch remains).
        catch = not self.dist.enabled and threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, self._on_sigint) if catch else None
        try:
            return self._fit()
        finally:
            if catch:
                signal.signal(signal.SIGINT, old)

    def _fit(self) -> TrainLog:
        a, c = self.args, self.corpus
        data = (c.src, c.src_len, c.tgt, c.tgt_len)
        pbar = None
        if self.dist.main and not a.no_progress and self.epoch < a.epochs and not self.stopped_early:
            try:
                from tqdm import tqdm

                per_epoch = len(self._batches(self.epoch))
                pbar = tqdm(total=(a.epochs - self.epoch) * per_epoch, initial=self.batch, desc="train",
                            unit="batch", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                pbar = None
        self.model.train()
        try:
            while self.epoch < a.epochs and not self.stopped_early:
                batches = self._batches(self.epoch)
                for idx in batches[self.batch:]:
                    t0 = time.perf_counter()
                    batch = trim_target(tuple(t[idx] for t in data))
                    batch = tuple(t.to(self.device, non_blocking=True) for t in batch)
                    token_sum, n_tok = train_step(self.train_model, self.loss_fn, self.optimizer, batch, a.clip)
                    if a.lr_schedule == "warmup-inverse-sqrt":
                        self.scheduler.step()
                    ls, nt = float(token_sum), int(n_tok)  # host sync once per step, for the progress report
                    dt = time.perf_counter() - t0
                    self.train_time += dt
                    self.ep_seconds += dt
                    self.step += 1
                    self.batch += 1
                    self.ep_sum += ls
                    self.ep_tok += nt
                    self.tok_total += nt
                    self.step_losses.append((self.step, ls / max(nt, 1)))
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix(epoch=f"{self.epoch + 1}/{a.epochs}", loss=f"{ls / max(nt, 1):.3f}",
                                         tok_s=f"{self.tok_total / max(self.train_time, 1e-9):,.0f}", refresh=False)
                    if self._stop_requested:
                        self._interrupt()
                self._end_epoch(pbar)
                if self._stop_requested:
                    self._interrupt()
        finally:
            if pbar is not None:
                pbar.close()
        return TrainLog(self.step_losses, self.history, self.step, self.tok_total / max(self.train_time, 1e-9),
                        self.best_epoch, self.stopped_early)

    def _end_epoch(self, pbar):
        a = self.args
        t0 = time.perf_counter()
        dev = self.validate(self.model)
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        self.epoch += 1
        record = {"epoch": self.epoch, "train_loss": self.ep_sum / max(self.ep_tok, 1), **dev, "lr": lr,
                  "seconds": self.ep_seconds + time.perf_counter() - t0}
        self.history.append(record)
        self.batch, self.ep_sum, self.ep_tok, self.ep_seconds = 0, 0.0, 0, 0.0
        bleu = dev.get("dev_bleu")
        improved = bleu is None or self.best_bleu is None or bleu > self.best_bleu
        if improved:
            self.best_bleu, self.best_epoch, self.bad_epochs = bleu, self.epoch, 0
            self.best_model = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        if a.lr_schedule == "plateau" and bleu is not None:
            self.scheduler.step(bleu)
        if a.patience and bleu is not None and self.bad_epochs >= a.patience:
            self.stopped_early = True
        if self.dist.main:
            msg = (f"epoch {self.epoch}/{a.epochs}: train loss {record['train_loss']:.3f}, dev loss "
                   f"{dev.get('dev_loss', float('nan')):.3f}, dev BLEU {_fmt(bleu)}, chrF {_fmt(dev.get('dev_chrf'))}"
                   f", lr {lr:.2g}, {record['seconds']:.1f} s" + (" *" if improved else ""))
            (pbar.write if pbar is not None else print)(msg)
            if improved:
                self._save("checkpoint.pt", info={"epoch": self.epoch, "dev_bleu": bleu,
                                                  "dev_chrf": dev.get("dev_chrf")})
            self.save_last()
            if a.keep_last:
                self._save(f"epoch-{self.epoch}.pt")
                old = a.out / f"epoch-{self.epoch - a.keep_last}.pt"
                if old.exists():
                    old.unlink()
            if self.stopped_early:
                (pbar.write if pbar is not None else print)(
                    f"early stop: no better dev BLEU for {a.patience} epochs; best epoch {self.best_epoch}")


def _fmt(x):
    return "-" if x is None else f"{x:.1f}"
