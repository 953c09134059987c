import torch

# The suite runs many small tensor operations; intra-op threads only add contention on the
# 2-core CI machines (a score call measured 90 ms with 2 threads under load vs 2 ms with 1).
torch.set_num_threads(1)
