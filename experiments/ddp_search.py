"""Data-parallel MixQ search and QAT over NeighborLoader shards with torch.distributed (DDP).

Run from the root of a checkout, on one machine with two processes (gloo on CPU), or on a cluster with the same
command per node::

    torchrun --standalone --nproc-per-node 2 -m experiments.ddp_search --nodes 100000 --out results/ddp_sage
    torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m experiments.ddp_search --nodes 1000000 --backend gloo --out results/ddp_sage

Every rank builds the same planted-community graph (fixed seed), captures the model on the same batch, and trains
on its own shard of the training seeds (``mixq_compile.minibatch.shard``); DDP averages the gradients of weights,
quantizer scales and bit-width logits alike, so every rank freezes the same bits (checked with an all-gather).
Rank 0 saves the frozen model (``mq.save``) and a summary JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch_geometric.nn import SAGEConv

import mixq_compile as mq
from mixq_compile.minibatch import evaluate_sampled, shard, train_sampled
from mixq_compile.sampling import neighbor_loader
from mixq_compile.synthetic import planted_communities


class Sage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.conv1, self.conv2 = SAGEConv(in_channels, hidden), SAGEConv(hidden, out_channels)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each phase")
    parser.add_argument("--lam", type=float, default=0.5)
    parser.add_argument("--backend", default="gloo", help="torch.distributed backend (gloo on CPU)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "ddp_search")
    parser.add_argument("--smoke", action="store_true", help="2,000 nodes, one epoch per phase")
    args = parser.parse_args(argv)
    if "RANK" not in os.environ:
        print("run me with torchrun (see the docstring), e.g. torchrun --standalone --nproc-per-node 2 "
              f"{sys.argv[0]}", file=sys.stderr)  # fmt: skip
        return 2
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    nodes, epochs = (2_000, 1) if args.smoke else (args.nodes, args.epochs)
    data = planted_communities(nodes, seed=0)
    train, test = (torch.nonzero(m).flatten() for m in (data.train_mask, data.test_mask))
    torch.manual_seed(rank)  # each rank samples its own batches
    gen = torch.Generator().manual_seed(rank)
    train_loader = neighbor_loader(data, [10, 5], input_nodes=shard(train), batch_size=1024, shuffle=True,
                                   generator=gen)  # fmt: skip
    test_loader = neighbor_loader(data, [10, 5], input_nodes=shard(test), batch_size=1024)
    capture = next(iter(neighbor_loader(data, [10, 5], input_nodes=train[:1024], batch_size=1024)))
    torch.manual_seed(0)  # the same initial weights on every rank
    model = Sage(data.num_features, 8)
    train_sampled(model, train_loader, epochs=epochs, desc=f"FP32 [rank {rank}]")
    fp32_acc = evaluate_sampled(model, test_loader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = mq.quantize(model.eval(), (capture.x, capture.edge_index))
    calibration = neighbor_loader(data, [10, 5], input_nodes=train[: 8 * 1024], batch_size=1024)
    mq.calibrate(qmodel, calibration, progress=False)  # the same 8 batches on every rank: identical ranges
    train_sampled(qmodel, train_loader, epochs=epochs, lam=args.lam, desc="search")
    frozen = mq.freeze(qmodel)
    bits = [None] * world
    dist.all_gather_object(bits, frozen.chosen_bits())
    if any(b != bits[0] for b in bits):
        raise RuntimeError(f"ranks froze different bits: {bits}")
    train_sampled(frozen, train_loader, epochs=epochs, lr=1e-3, desc="QAT")
    mixq_acc = evaluate_sampled(frozen, test_loader)
    if rank == 0:
        mq.save(frozen, args.out / "model")
        summary = {"world_size": world, "nodes": nodes, "fp32_acc": fp32_acc * 100, "mixq_acc": mixq_acc * 100,
                   "bits": bits[0], "ranks_agree": True, "cpu": mq.cpu.summary()}  # fmt: skip
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
