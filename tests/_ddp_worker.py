"""Run under ``torchrun --nproc_per_node=2``: DDP training, resume, per-rank result files."""

import json
import os
import sys

import torch

torch.set_num_threads(1)

if __name__ == "__main__":
    out = sys.argv[1]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch.distributed as dist
    from _train_helpers import TinyScore, param_hash, toy_loss

    from scoresde.training import TrainConfig, Trainer

    dist.init_process_group(backend="gloo")  # the launcher's job: the trainer only reads the group
    rank = int(os.environ["RANK"])
    cfg = TrainConfig(steps=6, batch_size=32, lr=1e-2, seed=3, log_every=1)
    # different initial weights per rank: DDP must broadcast rank 0's
    straight = Trainer(TinyScore(seed=rank), "8gaussians", cfg, loss_fn=toy_loss,
                       out_dir=os.path.join(out, "straight"), progress=False)
    straight.train()
    first = Trainer(TinyScore(seed=rank), "8gaussians", cfg, loss_fn=toy_loss,
                    out_dir=os.path.join(out, "split"), progress=False)
    first.train(3)
    resumed = Trainer(TinyScore(seed=10 + rank), "8gaussians", cfg, loss_fn=toy_loss,
                      out_dir=os.path.join(out, "split"), progress=False)
    resumed.resume()
    resumed.train()
    result = {
        "rank": rank,
        "world_size": straight.world_size,
        "ddp": type(straight._train_model).__name__,
        "straight": param_hash(straight.model),
        "straight_ema": param_hash(straight.ema_model),
        "resumed": param_hash(resumed.model),
        "losses": straight.losses,
        "resumed_losses": resumed.losses,
        "data_state": straight.data.generator.get_state().sum().item(),
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    straight.close()
    assert dist.is_initialized()  # closing a trainer leaves the group to its creator
    dist.destroy_process_group()
