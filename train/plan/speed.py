"""Step time, tokens/s, GPU-hours and cost of a job: compute at a stated MFU, the optimizer's memory traffic at
the device's HBM bandwidth, and communication at the cluster's stated link bandwidths.

step = compute + optimizer + exposed communication, per rank:
- compute: the step's model FLOPs (`train.metrics.throughput.TrainingFlops`, the count the training loop logs)
  in two classes. The decoder layers (plus the forward activation checkpointing recomputes) run at
  `peak x mfu_compute`; the LM head is one large dense GEMM and runs at the dense-GEMM efficiency measured on the
  device, and its cross entropy is memory traffic (44 bytes per logit element: fp32 cast, log-softmax forward and
  backward, the gradient cast back) at the HBM bandwidth. The head's share of a step changes with depth and
  batch (it is half the FLOPs of the 4-layer H200 benchmark), so one blended rate would not carry over.
- optimizer: parameter-proportional memory traffic, counted from DeepSpeed 0.19.8's ZeRO-1/2 step and torch's
  foreach AdamW: the gradient hook's bucket copy and averaging (4 x e bytes per local parameter), then per
  partition element the gradient norm, flatten, fp32 cast, clipping, AdamW (10 passes over fp32 tensors, 80
  bytes) and the cast back (5 x e + 104 bytes), then the all-gather's write (e per local parameter); gradient
  accumulation adds per micro-batch the copies (ZeRO-2/3) or autograd's accumulation (ZeRO-1).
- communication: EP all-to-all (dispatch and combine, forward and backward, again under checkpointing; on the
  critical path), gradient reduce-scatter (once per step under ZeRO-1, every micro-batch under ZeRO-2/3) and the
  parameter all-gather over the data-parallel groups, ZeRO-3's parameter gathers for every micro-batch;
  reductions overlap the backward when `deepspeed.overlap_comm` is on.
`mfu_compute` is not guessed: it comes from a measured step (train/plan/measured.py) with that step's own
optimizer and communication time taken out, so the planner reproduces the measurement it was calibrated on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HBM_EFFICIENCY = 0.8  # fraction of the nominal HBM bandwidth streaming elementwise kernels reach
CROSS_ENTROPY_BYTES = 44  # per logit element: .float() 6, log_softmax 12, nll grad 4, its backward 16, cast 6
OVERLAPPED_SHARE = 2 / 3  # the part of compute (backward) that gradient reduction can hide behind
FP32 = 4
# Published training throughput to compare with (CONTEXT.md sections 7 and 9), TFLOP/s per GPU.
ANCHORS: tuple[tuple[str, float], ...] = (
    ("Megatron-Core Qwen3-235B-A22B, 256 H100, bf16 (245-276 TFLOP/s/GPU)", 260.5),
    ("Megatron-Bridge Qwen3-30B-A3B, 16 H100, FP8, balanced routing", 206.0),
    ("Megatron-Bridge Qwen3-235B-A22B, 256 H100, FP8, balanced routing", 253.0),
)


@dataclass(frozen=True)
class StepWork:
    """What one rank does in one optimizer step."""

    model_flops: float  # forward + backward, the loop's count (MFU's numerator)
    head_flops: float  # the LM head's part of model_flops
    logit_elements: float  # rows of logits x vocabulary (the cross entropy's memory traffic)
    recompute_flops: float  # checkpointing's second forward
    param_bytes: float  # optimizer-side memory traffic
    all_to_all_bytes: float  # EP dispatch/combine bytes this rank sends
    all_to_all_remote_share: float  # share of them that leaves the node
    reduce_bytes_intra: float  # gradient/parameter collectives inside a node
    reduce_bytes_inter: float  # ... and across nodes
    overlap_comm: bool


@dataclass(frozen=True)
class Links:
    peak_tflops: float
    hbm_tbps: float
    intra_gbps: float
    inter_gbps: float
    dense_gemm_efficiency: float = 1.0  # a large dense GEMM's share of the peak on this device (measured)


@dataclass
class SpeedPlan:
    step_s: float
    compute_s: float
    optimizer_s: float
    comm_s: float
    tokens_per_step: float  # all ranks
    world_size: int
    mfu_compute: float
    mfu_source: str
    peak_tflops: float
    model_flops_per_rank: float
    price_per_gpu_hour: float
    anchors: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def mfu(self) -> float:
        """Whole-step MFU (model FLOPs / step time / peak), as the training loop logs it."""
        return self.model_flops_per_rank / self.step_s / (self.peak_tflops * 1e12)

    @property
    def gpu_hours_per_billion_tokens(self) -> float:
        return 1e9 / self.tokens_per_s * self.world_size / 3600

    @property
    def cost_per_billion_tokens(self) -> float:
        return self.gpu_hours_per_billion_tokens * self.price_per_gpu_hour

    def as_dict(self) -> dict:
        return {"step_s": self.step_s, "compute_s": self.compute_s, "optimizer_s": self.optimizer_s,
                "comm_s": self.comm_s, "tokens_per_s": self.tokens_per_s,
                "tokens_per_s_per_gpu": self.tokens_per_s / self.world_size, "mfu": self.mfu,
                "mfu_compute": self.mfu_compute, "mfu_source": self.mfu_source,
                "gpu_hours_per_billion_tokens": self.gpu_hours_per_billion_tokens,
                "cost_per_billion_tokens": self.cost_per_billion_tokens, "anchors": self.anchors}


def optimizer_bytes(local_params: float, partition_params: float, element_size: int, accum: int = 1,
                    reduce_every_micro_batch: bool = False) -> float:
    """Parameter-proportional memory traffic of one step on one rank (see the module docstring). Gradient
    accumulation adds, per extra micro-batch, the bucket copies (ZeRO-2/3 reduce every micro-batch) or autograd's
    accumulation into `.grad` (ZeRO-1: read, add, write)."""
    e = element_size
    per_extra = 4 * e if reduce_every_micro_batch else 3 * e
    return local_params * (4 * e + e + per_extra * (accum - 1)) + partition_params * (5 * e + 104)


def comm_seconds(work: StepWork, links: Links, compute_s: float) -> float:
    """Exposed communication: all-to-all in full, reductions beyond what the backward hides."""
    remote = work.all_to_all_remote_share
    a2a = work.all_to_all_bytes * ((1 - remote) / (links.intra_gbps * 1e9) + remote / (links.inter_gbps * 1e9))
    reduce = work.reduce_bytes_intra / (links.intra_gbps * 1e9) + work.reduce_bytes_inter / (links.inter_gbps * 1e9)
    if work.overlap_comm:
        reduce = max(0.0, reduce - OVERLAPPED_SHARE * compute_s)
    return a2a + reduce


def step_time(work: StepWork, links: Links, mfu_compute: float) -> tuple[float, float, float, float]:
    """(step, compute, optimizer, communication) seconds."""
    peak = links.peak_tflops * 1e12
    hbm = links.hbm_tbps * 1e12 * HBM_EFFICIENCY
    layers = (work.model_flops - work.head_flops + work.recompute_flops) / (peak * mfu_compute)
    head = work.head_flops / (peak * links.dense_gemm_efficiency) + work.logit_elements * CROSS_ENTROPY_BYTES / hbm
    compute = layers + head
    optimizer = work.param_bytes / hbm
    comm = comm_seconds(work, links, compute)
    return compute + optimizer + comm, compute, optimizer, comm


def calibrate_mfu(work: StepWork, links: Links, measured_step_s: float) -> float:
    """The decoder layers' MFU that makes this plan's step time equal a measured one (the head, cross entropy,
    optimizer and exposed communication taken out first)."""
    optimizer = work.param_bytes / (links.hbm_tbps * 1e12 * HBM_EFFICIENCY)
    lo, hi = 1e-4, 1.0
    for _ in range(100):  # step time falls monotonically with mfu: bisect
        mid = (lo + hi) / 2
        if step_time(work, links, mid)[0] > measured_step_s:
            lo = mid
        else:
            hi = mid
    if measured_step_s <= optimizer:
        raise ValueError(f"measured step {measured_step_s:.3f} s is shorter than the modelled optimizer time "
                         f"{optimizer:.3f} s")
    return (lo + hi) / 2


def anchor_rates(flops_per_token: float, world_size: int, price: float) -> list[dict]:
    """Tokens/s, GPU-hours and cost per billion tokens if each anchor's TFLOP/s per GPU were reached here."""
    out = []
    for name, tflops in ANCHORS:
        tokens_per_s = tflops * 1e12 / flops_per_token * world_size
        hours = 1e9 / tokens_per_s * world_size / 3600
        out.append({"anchor": name, "tflops_per_gpu": tflops, "tokens_per_s": tokens_per_s,
                    "gpu_hours_per_billion_tokens": hours, "cost_per_billion_tokens": hours * price})
    return out
