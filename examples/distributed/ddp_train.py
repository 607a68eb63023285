"""PyTorch DistributedDataParallel on CPU (gloo): every rank trains a copy of a small model on its shard of a
synthetic regression task; DDP averages the gradients, so all ranks hold the same weights.

Run it as a distributed trial with ``distribution: pytorch`` (see ddp.yml here): hpo gives each process
MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK and LOCAL_RANK, which ``init_process_group("gloo")`` reads.
Rank 0 (the chief) reports the trial's results; the other ranks' reports are kept per process.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import hpo


def main() -> None:
    params = hpo.get_next_parameter() or {}
    lr, epochs = float(params.get("lr", 0.05)), int(os.environ.get("EPOCHS", params.get("epochs", 5)))
    dist.init_process_group("gloo")  # env:// : MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same data and initial weights everywhere; each rank takes its shard
    true_w = torch.arange(1.0, 9.0)
    x = torch.randn(1024, 8)
    y = x @ true_w + 0.01 * torch.randn(1024)
    shard = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
    model = DistributedDataParallel(torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for epoch in range(epochs):
        for i in range(shard.start, shard.stop, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[i:i + 32]).squeeze(1), y[i:i + 32])
            loss.backward()  # DDP all-reduces the gradients here
            optimizer.step()
        with torch.no_grad():
            total = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        hpo.report_intermediate_result(float(total))
    weights = model.module.weight.detach().clone()
    gathered = [torch.zeros_like(weights) for _ in range(world)]
    dist.all_gather(gathered, weights)
    print(f"rank {rank}/{world}: loss {float(total):.5f}, weights identical on every rank: "
          f"{all(torch.equal(w, weights) for w in gathered)}", flush=True)
    hpo.report_final_result(float(total))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
