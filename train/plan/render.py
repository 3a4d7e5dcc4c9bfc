"""The plan as text: what `python -m train.plan` prints."""

from __future__ import annotations

from train.plan.memory import GIB
from train.plan.planner import Plan


def _gib(v: float) -> str:
    return f"{v / GIB:8.2f} GiB"


def render(plan: Plan) -> str:
    s, m, sp = plan.summary, plan.memory, plan.speed
    c, lay = s["cluster"], s["layout"]
    ranks = s["per_rank_parameters"]
    out = [f"plan: {s['model']}, {s['parameters'] / 1e9:.2f}B parameters ({s['parameters_trainable'] / 1e9:.2f}B "
           f"trainable) on {c['nodes']} x {c['gpus_per_node']} {c['gpu']} ({c['world_size']} ranks)",
           f"  layout: EP {lay['ep_size']} x ZeRO-{lay['zero_stage']}, micro-batch {lay['micro_batch_size']} x "
           f"{lay['seq_len']}, grad accumulation {lay['grad_accum_steps']}, activation checkpointing "
           f"{'on' if lay['activation_checkpointing'] else 'off'}, {lay['precision']}, kernels "
           f"{lay['kernels']['device']} (experts: {lay['kernels']['experts']}, Gated DeltaNet: {lay['kernels']['gdn']})",
           f"  parameters per rank: experts {ranks['experts'] / 1e9:.3f}B (of {s['parameters'] / 1e9:.2f}B, split over "
           f"EP {lay['ep_size']}), dense {ranks['dense'] / 1e9:.3f}B, embedding {ranks['embedding'] / 1e9:.3f}B, "
           f"head {ranks['lm_head'] / 1e9:.3f}B, vision {ranks['vision'] / 1e9:.3f}B (replicated)",
           "", "held per rank:"]
    for name, v in m.states.items():
        out.append(f"  {name:<32}{_gib(v)}")
    acts = s["activations_per_micro_batch_gib"]
    out.append(f"  {'activations per micro-batch':<32}{acts['checkpointing']:8.2f} GiB with activation checkpointing, "
               f"{acts['no checkpointing']:.2f} GiB without")
    if s["all_to_all_buffers_gib"]:
        out.append(f"  {'all-to-all buffers':<32}{s['all_to_all_buffers_gib']:8.2f} GiB")
    out += ["", f"memory per rank, at its peak ({m.peak_phase}):"]
    for name, v in m.items.items():
        out.append(f"  {name:<32}{_gib(v)}")
    out.append(f"  {'runtime reserve':<32}{_gib(m.reserve)}")
    verdict = "fits" if m.fits else "DOES NOT FIT"
    out.append(f"  {'total':<32}{_gib(m.total)}  of {m.limit / GIB:.1f} GiB: {verdict}")
    out.append("  moments compared: " + ", ".join(f"{k} {v / GIB:.1f}" for k, v in m.phases.items()) + " GiB")
    out += ["", "speed (predicted):",
            f"  step {sp.step_s:.3f} s = compute {sp.compute_s:.3f} + optimizer {sp.optimizer_s:.3f} + exposed "
            f"communication {sp.comm_s:.3f}",
            f"  compute at MFU {100 * sp.mfu_compute:.1f}%: {sp.mfu_source}",
            f"  {sp.tokens_per_s:,.0f} tokens/s ({sp.tokens_per_s / sp.world_size:,.0f} per rank), whole-step MFU "
            f"{100 * sp.mfu:.1f}%",
            f"  {sp.gpu_hours_per_billion_tokens:,.1f} {c['gpu']}-hours and {c['currency']} "
            f"{sp.cost_per_billion_tokens:,.0f} per billion tokens at {c['price_per_gpu_hour']} per device-hour",
            "  at the published anchors' TFLOP/s per GPU (their FLOP counts differ from ours):"]
    for a in sp.anchors:
        out.append(f"    {a['tflops_per_gpu']:5.0f} TFLOP/s  {a['tokens_per_s']:12,.0f} tokens/s  "
                   f"{a['gpu_hours_per_billion_tokens']:9,.1f} GPU-h/B  {c['currency']} {a['cost_per_billion_tokens']:9,.0f}/B"
                   f"   {a['anchor']}")
    if plan.notes:
        out += ["", "notes:"] + [f"  - {n}" for n in plan.notes]
    if not m.fits:
        out += ["", "changes that make it fit (cheapest per token first):"]
        if plan.suggestions:
            for sug in plan.suggestions:
                out.append(f"  {sug['change']:<64} {sug['peak_gib']:7.1f} GiB  {sug['tokens_per_s']:12,.0f} tokens/s"
                           f"  {c['currency']} {sug['cost_per_billion_tokens']:,.0f}/B tokens")
        else:
            out.append("  none found with one change (EP, ZeRO stage, micro-batch, checkpointing, or up to 64 nodes)")
    return "\n".join(out)
