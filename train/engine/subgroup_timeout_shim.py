"""DeepSpeed 0.19.8 creates its expert- and data-parallel process groups with `new_group(ranks)`
(deepspeed/comm/torch.py `TorchBackend.new_group`), which gives them torch's default timeout (30 min on gloo,
10 min on NCCL) instead of the one passed to `init_distributed`. A rank that hangs inside an AutoEP all-to-all
then holds the others for 30 minutes whatever `parallel.timeout_s` says. This shim passes the configured timeout
to every group DeepSpeed creates; tests/reliability/test_rank_failures.py (the hung-rank case) fails without it.
"""

from __future__ import annotations

import datetime


def apply(timeout: datetime.timedelta) -> None:
    import torch.distributed
    from deepspeed.comm.torch import TorchBackend

    def new_group(self, ranks):
        return torch.distributed.new_group(ranks, timeout=timeout)

    TorchBackend.new_group = new_group
