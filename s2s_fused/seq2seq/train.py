"""The training loop: teacher-forced steps over bucketed, shuffled batches for a number of epochs, on one process
or, under ``torchrun --nproc_per_node=N``, with DistributedDataParallel (gloo on CPU, nccl on CUDA), every rank
training on its shard of each epoch."""
from __future__ import annotations

import dataclasses
import os
import sys
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
    epoch_losses: list[tuple[int, float]]  # (last step of the epoch, mean CE per target token of the epoch)
    steps: int
    tokens_per_s: float                    # target tokens per second of step time (this process's shard)


def train(model, loss_fn, corpus, args, device, dist: Dist) -> TrainLog:
    """``args.epochs`` epochs of Adam (``args.lr``, gradient-norm clipping ``args.clip``) over ``corpus``'s training
    pairs in batches of ``args.batch_size``, shuffled by ``args.seed`` and the epoch; a tqdm bar on rank 0 unless
    ``args.no_progress``."""
    train_model = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = (corpus.src, corpus.src_len, corpus.tgt, corpus.tgt_len)

    step_losses, epoch_losses = [], []
    step, tok_total, train_time = 0, 0, 0.0
    pbar = None
    n_batches = len(shard_batches(len(corpus.src), args.batch_size, epoch=0, seed=args.seed, rank=dist.rank,
                                  world_size=dist.world, lengths=corpus.tgt_len))
    if dist.main and not args.no_progress:
        try:
            from tqdm import tqdm

            pbar = tqdm(total=args.epochs * n_batches, desc="train", unit="batch", dynamic_ncols=True,
                        file=sys.stderr)
        except ImportError:
            pbar = None
    model.train()
    for epoch in range(args.epochs):
        ep_sum, ep_tok = 0.0, 0
        batches = shard_batches(len(corpus.src), args.batch_size, epoch=epoch, seed=args.seed, rank=dist.rank,
                                world_size=dist.world, lengths=corpus.tgt_len)
        for idx in batches:
            t0 = time.perf_counter()
            batch = trim_target(tuple(t[idx] for t in data))
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            token_sum, n_tok = train_step(train_model, loss_fn, optimizer, batch, args.clip)
            ls, nt = float(token_sum), int(n_tok)  # host sync once per step, for the progress report
            train_time += time.perf_counter() - t0
            step += 1
            ep_sum += ls
            ep_tok += nt
            tok_total += nt
            step_losses.append((step, ls / max(nt, 1)))
            if pbar is not None:
                pbar.update(1)
                pbar.set_postfix(epoch=f"{epoch + 1}/{args.epochs}", loss=f"{ls / max(nt, 1):.3f}",
                                 tok_s=f"{tok_total / max(train_time, 1e-9):,.0f}", refresh=False)
        epoch_losses.append((step, ep_sum / max(ep_tok, 1)))
    if pbar is not None:
        pbar.close()
    return TrainLog(step_losses, epoch_losses, step, tok_total / max(train_time, 1e-9))
