"""Memory one rank holds at its peak, item by item: model states as DeepSpeed 0.19.8 partitions them under
ZeRO 1/2/3 with AutoEP, the micro-batch's activations, communication buffers and a runtime reserve.

What each ZeRO stage keeps per rank (read from deepspeed/runtime/zero/stage_1_and_2.py and stage3.py, and
checked phase by phase on this CPU, benchmarks/plan_check.py):
- stage 1/2: every parameter the rank holds, in the model dtype (dense parameters on every rank, routed experts
  only for the rank's `num_experts / ep_size`); a cloned fp32 master copy of the rank's 1/dp partition (a copy
  in fp32 runs too); Adam's two fp32 moments of that partition. Dense groups partition over the world, expert
  groups over the expert-data-parallel group (world / ep_size). Gradients end in the partition's buffer; with
  `overlap_comm` they pass two `reduce_bucket_size` buckets during backward (one without), which a GPU
  allocates in full.
- stage 3: parameters, master weights, moments and a gradient buffer (model dtype) partitioned; the step makes
  each sub-group's fp32 gradient (`sub_group_size`, 1e9; `_prepare_fp32_grad_for_sub_group`) and frees it after
  (`_release_sub_group`), so backward does not hold it; the forward gathers layers and keeps them while
  `stage3_max_live_parameters` (1e9 elements) allows, so up to that many are whole at once.
- step: per optimizer group the gradient partition is flattened and cast to fp32 and Adam (torch foreach) makes
  a square-root buffer of its size (8 bytes per element of the largest group; DeepSpeed splits expert groups
  into chunks of 178,956,971 elements, deepspeed/moe/utils.py; dense groups stay whole).
The peak is the largest of four moments: the loss's backward (every activation alive plus two fp32 [N, V]
gradients), the layers' backward (checkpointed layers recomputed, stage 2/3 buckets allocated), the end of
backward (all gradients), and the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.plan.activations import ActivationBytes
from train.plan.inventory import Inventory

GIB = 2**30
FP32 = 4
MOE_GROUP_MAX = 178_956_971  # deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer
ZERO3_MAX_LIVE = 1_000_000_000  # stage3_max_live_parameters (DeepSpeed's default; we do not change it)
ZERO3_SUB_GROUP = 1_000_000_000  # sub_group_size
STEP_TEMP_BYTES = 8  # per element of the largest group partition: flattened/fp32 gradient + Adam's sqrt buffer
ZERO3_STEP_TEMP_BYTES = 10  # stage 3: beside the sub-group's fp32 gradient (measured on this CPU: 10.4)


@dataclass(frozen=True)
class Layout:
    """How a job is spread over the world and what numbers it uses."""

    world_size: int
    ep_size: int
    zero_stage: int
    element_size: int  # 2: bf16 parameters (fp32 masters), 4: fp32
    overlap_comm: bool
    reduce_bucket_size: int
    allgather_bucket_size: int
    # A GPU's caching allocator hands out a buffer's full size; on the CPU only written pages count, so a bucket
    # costs at most the gradients that pass through it.
    lazy_pages: bool

    @property
    def expert_dp(self) -> int:
        return self.world_size // self.ep_size


@dataclass
class MemoryPlan:
    """Bytes per rank: `items` at the peak moment, every moment's total, and the device limit."""

    items: dict[str, float]
    phases: dict[str, float]
    peak_phase: str
    reserve: float
    limit: float
    notes: list[str] = field(default_factory=list)
    # what a rank holds whatever the moment: parameters, gradients (at their largest: the end of backward),
    # fp32 masters, Adam moments
    states: dict[str, float] = field(default_factory=dict)

    @property
    def tensors(self) -> float:
        """What torch's allocator holds at the peak (`torch.cuda.max_memory_allocated`; on the CPU, what a run
        adds above its process baseline)."""
        return self.phases[self.peak_phase]

    @property
    def total(self) -> float:
        return self.tensors + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.limit

    def as_dict(self) -> dict:
        return {"peak_gib": self.total / GIB, "tensors_gib": self.tensors / GIB, "reserve_gib": self.reserve / GIB,
                "limit_gib": self.limit / GIB, "fits": self.fits, "peak_phase": self.peak_phase,
                "items_gib": {k: v / GIB for k, v in self.items.items()},
                "phases_gib": {k: v / GIB for k, v in self.phases.items()},
                "states_gib": {k: v / GIB for k, v in self.states.items()}, "notes": list(self.notes)}


def partition_elements(counts: dict[str, float], layout: Layout) -> float:
    """Elements of the optimizer partition this rank owns: dense over the world, experts over world / ep."""
    if layout.zero_stage == 0:
        return sum(counts.values())
    dense = sum(v for k, v in counts.items() if k != "experts")
    return dense / layout.world_size + counts.get("experts", 0) / layout.expert_dp


def largest_group_partition(inv: Inventory, layout: Layout) -> float:
    """The largest optimizer group's partition on this rank: all dense parameters form one group (weight decay
    split aside: norms and biases are small), experts come in chunks of at most MOE_GROUP_MAX elements (an
    expert weight larger than that is a group by itself)."""
    trainable = inv.on_rank(layout.ep_size, trainable=True)
    dense = sum(v for k, v in trainable.items() if k != "experts")
    experts = trainable["experts"]
    chunk = min(experts, max(MOE_GROUP_MAX, inv.largest_expert_tensor / layout.ep_size))
    if layout.zero_stage == 0:
        return max(dense, chunk)
    return max(dense / layout.world_size, chunk / layout.expert_dp)


def memory_plan(inv: Inventory, layout: Layout, act: ActivationBytes, checkpointing: bool, all_to_all: float,
                reserve_bytes: float, limit_bytes: float, num_layers: int) -> MemoryPlan:
    """Peak bytes per rank. `all_to_all`: dispatch/combine buffers of the MoE layer in flight (EP > 1)."""
    e = layout.element_size
    held = inv.on_rank(layout.ep_size)
    trainable = inv.on_rank(layout.ep_size, trainable=True)
    n_held, n_train = sum(held.values()), sum(trainable.values())
    part = partition_elements(trainable, layout)
    items: dict[str, float] = {}
    live = 0.0
    if layout.zero_stage == 3:
        items["parameters"] = partition_elements(held, layout) * e
        # gathered in full during forward and backward; experts only when their data-parallel group has peers.
        # DeepSpeed keeps what it gathered while stage3_max_live_parameters allows; with checkpointing the
        # recompute breaks its trace and parameters are released after use (measured: about two layers' worth)
        gathered = (n_held - held["experts"]) * (layout.world_size > 1) + held["experts"] * (layout.expert_dp > 1)
        if checkpointing:
            gathered = min(gathered, 2 * gathered / num_layers)
        live = min(gathered, ZERO3_MAX_LIVE) * e
    else:
        items["parameters"] = n_held * e
    items["fp32 master weights"] = part * FP32 if layout.zero_stage > 0 or e != FP32 else 0.0
    items["Adam moments"] = 2 * FP32 * part
    if layout.zero_stage == 3:
        items["gradient partition"] = part * e
    static = sum(items.values())

    touched = min(layout.reduce_bucket_size, n_train)  # a bucket's elements that gradients pass through
    bucket = (touched if layout.lazy_pages else layout.reduce_bucket_size) * e
    comm_temp = touched * e if layout.lazy_pages else 0.0  # gloo reduces a CPU bucket through a copy of it
    partition_grads = part * e
    if layout.zero_stage == 0:
        bwd_grads, end_grads, step_grads = n_train * e, n_train * e, n_train * e
    elif layout.zero_stage == 3:
        bwd_grads, end_grads, step_grads = bucket, bucket + comm_temp, 0.0
    elif layout.overlap_comm:  # reduced during backward through two buckets into the partition buffer
        buckets = bucket * (1 if layout.lazy_pages else 2)
        # a GPU allocates the partition buffer at the first reduction; on the CPU its pages fill as it does
        bwd_grads = buckets + (0.0 if layout.lazy_pages else partition_grads)
        end_grads, step_grads = buckets + comm_temp + partition_grads, partition_grads
    else:  # stage 1: every gradient lives until backward ends, then moves into a bucket and the partition buffer
        bwd_grads = n_train * e
        end_grads = n_train * e - (touched * e if layout.lazy_pages else 0.0) + bucket + comm_temp + partition_grads
        step_grads = partition_grads
    # stage 3's step: the sub-group's fp32 gradient (made and freed by the step) and Adam's temporaries
    step_temp = ((FP32 + ZERO3_STEP_TEMP_BYTES) * min(part, ZERO3_SUB_GROUP) if layout.zero_stage == 3
                 else STEP_TEMP_BYTES * largest_group_partition(inv, layout))

    during = static + live + all_to_all
    # one layer's backward: the gradients of its parameters (this rank's experts and the dense part) and of the
    # activations flowing through its experts
    layer_grads = (n_train - trainable["embedding"] - trainable["lm_head"] - trainable["vision"]) / num_layers * e
    layer_backward = act.layer_backward + layer_grads
    phases = {
        "loss backward": during + act.saved + act.loss_backward,
        # without checkpointing every activation is alive when the first gradients arrive: on a GPU the buckets
        # and the partition buffer are allocated then in full (on the CPU they fill as activations are freed);
        # checkpointed layers keep only their inputs, so the recompute comes while gradients pile up
        "layers backward": during + act.saved + act.layer_recompute + layer_backward
        + (bwd_grads if checkpointing or (not layout.lazy_pages and (layout.overlap_comm or layout.zero_stage == 3))
           else 0.0),
        "end of backward": static + live + end_grads,
        "optimizer step": static + step_grads + step_temp,
    }
    peak = max(phases, key=phases.get)
    if peak != "optimizer step" and live:
        items["gathered parameters (ZeRO-3)"] = live
    if peak == "loss backward":
        items.update({"activations": act.saved, "cross-entropy backward": act.loss_backward})
    elif peak == "layers backward":
        items.update({"activations": act.saved + act.layer_recompute, "one layer's backward": layer_backward,
                      "gradients and buckets": phases[peak] - during - act.saved - act.layer_recompute
                      - layer_backward})
    elif peak == "end of backward":
        items["gradients and buckets"] = end_grads
    else:
        items.update({"gradients": step_grads, "optimizer step temporaries": step_temp})
    if all_to_all and peak in ("loss backward", "layers backward"):
        items["all-to-all buffers"] = all_to_all
    notes = []
    if n_held > n_train:
        notes.append(f"{(n_held - n_train) / 1e9:.3f}B parameters per rank are frozen: held, without gradients "
                     "or optimizer states")
    states = {"parameters": items["parameters"] + live, "gradients": end_grads + (
        items.get("gradient partition", 0.0)), "fp32 master weights": items["fp32 master weights"],
        "Adam moments": items["Adam moments"]}
    return MemoryPlan(items, phases, peak, reserve_bytes, limit_bytes, notes, states)
