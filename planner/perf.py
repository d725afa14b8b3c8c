"""Roofline performance estimates from a hardware profile (DESIGN §7).

Prefill is compute-bound: 2 FLOPs per active parameter per token plus causal attention, at the card's
dense tensor throughput for the format's compute dtype; it cannot be faster than reading the weights
once. Decode is bandwidth-bound: every step reads the rank's weights (for MoE only the experts the
batch touches) and the KV cache written so far. Tensor parallelism adds two all-reduces of the hidden
states per layer over the link; pipeline stages run one after the other for a single batch.

These are floors (speed of light), not predictions of a tuned engine: real engines reach some fraction
of them, and the fraction is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.memory import Estimate
from planner.spec import active_param_count, param_count


@dataclass(frozen=True)
class Roofline:
    """Speed-of-light estimates for one plan on one GPU type."""

    prefill_s: float
    """Time to prefill the whole batch's prompts."""
    decode_step_s: float
    """Time of one decode step for the whole batch, at the average context of the decode phase."""
    decode_tokens_per_s: float
    """Generated tokens per second across the batch."""
    prefill_bound: str
    """compute or memory."""
    decode_bound: str
    """memory or compute."""
    allreduce_s_per_step: float
    """TP all-reduce time inside one decode step."""

    def to_json(self) -> dict:
        return {"prefill_s": self.prefill_s, "decode_step_s": self.decode_step_s,
                "decode_tokens_per_s": self.decode_tokens_per_s,
                "prefill_bound": self.prefill_bound, "decode_bound": self.decode_bound,
                "allreduce_s_per_step": self.allreduce_s_per_step}


def _allreduce_s(nbytes: int, tp: int, link_bytes_per_s: int) -> float:
    """Ring all-reduce: each rank sends and receives 2 (t-1)/t of the buffer."""
    if tp <= 1 or link_bytes_per_s <= 0:
        return 0.0
    return 2 * (tp - 1) / tp * nbytes / link_bytes_per_s


def roofline(est: Estimate, gpu) -> Roofline:
    """Roofline prefill latency and decode tokens/s for an estimate on a GPU profile, or on one
    profile per pipeline stage (a mixed set: each stage at its own cards' speed)."""
    spec, wl, tp, pp = est.spec, est.workload, est.tp, est.pp
    stage_gpus = list(gpu) if isinstance(gpu, (list, tuple)) else [gpu] * pp
    act_bytes = 4 if est.weights.key == "fp32" else 2
    total_params = param_count(spec)
    active = active_param_count(spec)
    h = spec.hidden
    # Attention FLOPs per token per layer against s keys: QK^T and PV, 2 x 2 x heads x head_dim x s.
    attn_width = spec.heads * (spec.q_head_dim + spec.v_dim)

    prefill = decode = ar_step = 0.0
    p_c = p_m = d_c = d_m = 0.0  # compute and memory times summed over stages
    for stage in range(pp):
        r = next(x for x in est.ranks if x.stage == stage)
        g = stage_gpus[stage]
        flops = max(1, g.peak_flops(est.weights.key))
        bw = max(1, g.memory_bandwidth_bytes_per_s)
        link = g.link_bandwidth_bytes_per_s
        n_layers = r.layers[1] - r.layers[0]
        frac = n_layers / spec.layers if spec.layers else 0
        # Prefill: weights' FLOPs over every prompt token, attention causal (half the square).
        tokens = wl.batch * wl.prompt_tokens
        p_flops = (2 * active * frac * tokens
                   + 2 * attn_width * n_layers * wl.batch * wl.prompt_tokens ** 2 / 2) / tp
        p_compute = p_flops / flops
        p_memory = r.weights / bw
        p_ar = 2 * n_layers * _allreduce_s(tokens * h * act_bytes, tp, link)
        prefill += max(p_compute, p_memory) + p_ar
        p_c, p_m = p_c + p_compute, p_m + p_memory
        # Decode: read the weights (MoE: the experts the batch touches) and the KV cache so far.
        s_avg = wl.prompt_tokens + max(wl.new_tokens, 1) / 2
        weights_read = r.weights
        if spec.moe:
            expert_bytes = r.detail["weights"].get("quantized", 0) if est.weights.quantized \
                else r.weights
            share = (total_params - active) / total_params if total_params else 0
            touched = min(1.0, wl.batch * spec.experts_per_token / spec.experts)
            weights_read = r.weights - expert_bytes * share * (1 - touched)
        kv = r.detail["kv_cache"]
        kv_read = wl.batch * kv["bytes_per_token_per_layer"] * sum(
            k["layers"] * (min(s_avg, k["window"]) if k["window"] else s_avg)
            for k in kv["by_kind"].values())
        d_memory = (weights_read + kv_read) / bw
        d_flops = (2 * active * frac * wl.batch + 2 * attn_width * n_layers * wl.batch * s_avg) / tp
        d_compute = d_flops / flops
        d_ar = 2 * n_layers * _allreduce_s(wl.batch * h * act_bytes, tp, link)
        decode += max(d_memory, d_compute) + d_ar
        d_c, d_m = d_c + d_compute, d_m + d_memory
        ar_step += d_ar
    return Roofline(
        prefill_s=prefill, decode_step_s=decode,
        decode_tokens_per_s=wl.batch / decode if decode > 0 else float("inf"),
        prefill_bound="compute" if p_c >= p_m else "memory",
        decode_bound="compute" if d_c >= d_m else "memory",
        allreduce_s_per_step=ar_step)
