"""Training steps measured on real devices, which the planner calibrates its compute rate on and is checked
against. Each entry copies its numbers from the results file it names (tests/plan/test_measured.py reads the
files back, so a rerun that changes them cannot leave this table stale).

Only what was run is here: one H200 (bf16, 2026-11-28, benchmarks/gpu_check.sh) and this 2-core CPU. Nothing
was measured on an H100 or for Qwen3.5 on a GPU; the plan says so when it borrows a number.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredStep:
    family: str
    gpu: str  # the cluster.gpu name it was measured on
    source: str  # results file (repository-relative)
    what: str
    # the benchmark's Hydra overrides (configs/pretrain.yaml); it feeds whole rows without position ids, which is
    # what data.packing=per_document plans (no attention mask)
    overrides: tuple[str, ...]
    micro_batch: int
    seq_len: int
    world_size: int
    step_ms: float
    tokens_per_s: float
    mfu: float
    peak_memory_gib: float  # torch.cuda.max_memory_allocated (GPU) of rank 0
    peak_tflops: float  # the device peak the run's MFU divides by (on a CPU, measured when it ran)


MEASURED: tuple[MeasuredStep, ...] = (
    MeasuredStep(
        family="qwen3_moe", gpu="h200", source="benchmarks/results/train_step_h200_30b_a3b_4l_mb4.json",
        what="Qwen3-30B-A3B width and experts, 4 of 48 layers, micro-batch 4 x 4096, bf16, ZeRO-1, EP=1, 1 H200",
        overrides=("model=qwen3_30b_a3b", "model.hf_config.num_hidden_layers=4",
                   "model.activation_checkpointing=false", "parallel.ep_size=1", "deepspeed=zero1",
                   "data.packing=per_document"),
        micro_batch=4, seq_len=4096, world_size=1, step_ms=340.38212400000134, tokens_per_s=48134.13761998834,
        mfu=0.1769082235709576, peak_memory_gib=84.60188722610474, peak_tflops=989.0),
    MeasuredStep(
        family="qwen3_moe", gpu="h200", source="benchmarks/results/train_step_h200_30b_a3b_8l_mb2.json",
        what="Qwen3-30B-A3B width and experts, 8 of 48 layers, micro-batch 2 x 4096, bf16, ZeRO-1, EP=1, 1 H200",
        overrides=("model=qwen3_30b_a3b", "model.hf_config.num_hidden_layers=8",
                   "model.activation_checkpointing=false", "parallel.ep_size=1", "deepspeed=zero1",
                   "data.packing=per_document"),
        micro_batch=2, seq_len=4096, world_size=1, step_ms=414.8825955000035, tokens_per_s=19745.34504183589,
        mfu=0.10786644093896386, peak_memory_gib=100.7968020439148, peak_tflops=989.0),
    MeasuredStep(
        family="qwen3_5_moe", gpu="cpu", source="benchmarks/results/train_step_cpu_lm_head.json",
        what="tiny Qwen3.5-MoE (configs/model/qwen3_5_moe_tiny.yaml), micro-batch 8 x 1024, fp32, 1 process, "
             "1 thread, this 2-core CPU",
        overrides=("model=qwen3_5_moe_tiny", "parallel.ep_size=1", "deepspeed=zero1", "data.packing=per_document"),
        micro_batch=8, seq_len=1024, world_size=1, step_ms=2048.844707000171, tokens_per_s=3998.3508618348965,
        mfu=0.1624858462400617, peak_memory_gib=1.7050247192382812,
        peak_tflops=0.1788361966427881),
)


@dataclass(frozen=True)
class Borrowed:
    """The measured step a plan takes its compute rate from, and how far it is from the planned job."""

    step: MeasuredStep
    note: str


def best_measured(family: str, gpu: str) -> Borrowed | None:
    """The highest-MFU step measured for this family on this device; else this device with another family;
    else another device. None when nothing was measured at all."""
    same = [m for m in MEASURED if m.family == family and m.gpu == gpu]
    if same:
        return Borrowed(max(same, key=lambda m: m.mfu), "measured for this model family on this device")
    device = [m for m in MEASURED if m.gpu == gpu]
    if device:
        m = max(device, key=lambda m: m.mfu)
        return Borrowed(m, f"measured for {m.family} on this device, not for {family}")
    gpus = [m for m in MEASURED if m.gpu != "cpu" and gpu != "cpu"]
    if gpus:
        m = max(gpus, key=lambda m: m.mfu)
        return Borrowed(m, f"measured for {m.family} on {m.gpu}, not on {gpu}: assumed to carry over")
    return None


@dataclass(frozen=True)
class MeasuredGemm:
    """A large dense bf16 GEMM chain (forward + backward) timed on a device: the LM head's rate in a plan."""

    gpu: str
    source: str
    what: str
    flops: float
    ms: float
    peak_tflops: float

    @property
    def efficiency(self) -> float:
        return self.flops / (self.ms / 1e3) / (self.peak_tflops * 1e12)


# benchmarks/moe_block.py's `dense_equal`: a dense SwiGLU of the routed FLOPs of the Qwen3-30B-A3B MoE block
# (hidden 2048, width 8 x 768, 16384 tokens): 3 GEMMs of 2 T H (k I) FLOPs each, x3 for forward + backward.
DENSE_GEMMS: tuple[MeasuredGemm, ...] = (
    MeasuredGemm(gpu="h200", source="benchmarks/results/moe_block_cuda_h200.json",
                 what="dense SwiGLU, hidden 2048, width 6144, 16384 tokens, bf16, forward + backward, 1 H200",
                 flops=3 * 3 * 2 * 16384 * 2048 * 8 * 768, ms=7.09858200000113, peak_tflops=989.0),
)


def dense_gemm_efficiency(gpu: str) -> float:
    """A large dense GEMM's share of the device peak: measured on this device, else on another GPU (the H100
    has the H200's compute), else 1.0 (a CPU's peak is itself a measured matmul rate)."""
    same = [g for g in DENSE_GEMMS if g.gpu == gpu]
    if same:
        return same[0].efficiency
    if gpu != "cpu" and DENSE_GEMMS:
        return DENSE_GEMMS[0].efficiency
    return 1.0
