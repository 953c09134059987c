"""Train forever with a checkpoint after every step (killed with SIGKILL by the test)."""

import sys

import torch

torch.set_num_threads(1)

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[2])
    from _train_helpers import TinyScore, toy_loss

    from scoresde.training import TrainConfig, Trainer

    cfg = TrainConfig(steps=100_000, batch_size=32, lr=1e-3, checkpoint_every=1, log_every=1)
    model = TinyScore(big_buffer=500_000)
    Trainer(model, "8gaussians", cfg, loss_fn=toy_loss, out_dir=sys.argv[1], progress=False).train()
