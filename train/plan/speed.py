"""Step time, tokens/s, GPU-hours and cost of a job: compute at a stated MFU, the optimizer's memory traffic at
the device's HBM bandwidth, and communication at the cluster's stated link bandwidths.

step = compute + optimizer + exposed communication, per rank:
- compute: the step's model FLOPs (`train.metrics.throughput.TrainingFlops`, the count the training loop logs)
  plus the forward that activation checkpointing recomputes, at `peak x mfu_compute`.
- optimizer: parameter-proportional memory traffic, counted from DeepSpeed 0.19.8's ZeRO-1/2 step and torch's
  foreach AdamW: the gradient hook's bucket copy and averaging (4 x e bytes per local parameter), then per
  partition element the gradient norm, flatten, fp32 cast, clipping, AdamW (10 passes over fp32 tensors, 80
  bytes) and the cast back (5 x e + 104 bytes), then the all-gather's write (e per local parameter).
- communication: EP all-to-all (dispatch and combine, forward and backward, again under checkpointing; on the
  critical path), gradient reduce-scatter + parameter all-gather over the data-parallel groups, ZeRO-3
  parameter gathers; reductions overlap the backward when `deepspeed.overlap_comm` is on.
`mfu_compute` is not guessed: it comes from a measured step (train/plan/measured.py) with that step's own
optimizer and communication time taken out, so the planner reproduces the measurement it was calibrated on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HBM_EFFICIENCY = 0.8  # fraction of the nominal HBM bandwidth streaming elementwise kernels reach
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


def optimizer_bytes(local_params: float, partition_params: float, element_size: int) -> float:
    """Parameter-proportional memory traffic of one step on one rank (see the module docstring)."""
    e = element_size
    return local_params * (4 * e + e) + partition_params * (5 * e + 104)


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
    compute = (work.model_flops + work.recompute_flops) / (links.peak_tflops * 1e12 * mfu_compute)
    optimizer = work.param_bytes / (links.hbm_tbps * 1e12 * HBM_EFFICIENCY)
    comm = comm_seconds(work, links, compute)
    return compute + optimizer + comm, compute, optimizer, comm


def calibrate_mfu(work: StepWork, links: Links, measured_step_s: float) -> float:
    """The compute MFU that makes this plan's step time equal a measured one (optimizer and, for a fully
    exposed collective, communication time taken out first)."""
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
