"""transformers' own activation walk: one ``generate()`` step, allocation by allocation.

What transformers 5.24.0 keeps live in a step of ``generate(do_sample=False)`` on a Llama-style
decoder, read from its source and checked against transformers itself by ``planner verify
--engine transformers`` (planner/engines/hf_verify.py; numbers in planner/engines/NOTES.md):

- ``LlamaModel.forward`` holds ``inputs_embeds`` [T, h] and the RoPE ``cos``/``sin`` [b, s_q,
  head_dim] (model dtype; the fp32 ones are temporaries) for the whole forward, and the layer loop
  holds each layer's input while the layer runs (models/llama/modeling_llama.py).
- ``apply_rotary_pos_emb``: q·cos, rotate_half(q) (a neg half and a cat), ·sin, their sum.
- ``DynamicLayer.update`` ``torch.cat``s the new K/V onto the cache: in prefill a copy of the
  step's K/V; in decode the old cache tensor is live beside the new one until reassigned (the
  growth transient); ``DynamicSlidingWindowLayer`` cats both K and V before reassigning either
  and keeps a view of the window (cache_utils.py).
- SDPA (integrations/sdpa_attention.py): no score matrix; GQA through ``enable_gqa`` when there
  is no mask, else ``repeat_kv`` copies (prefill of a sliding layer past its window: a bool mask
  from masking_utils.py) or ``pack_gqa`` views (decode).
- eager (``eager_attention_forward``): repeat_kv copies of K and V, scores, ·scaling, + the
  additive float mask [b, 1, s_q, n] (masking_utils.py ``eager_mask``, held for the forward),
  ``softmax(dtype=float32)`` and the cast back; the probabilities are returned to the decoder
  layer, which holds them (``hidden_states, _ = self.self_attn(...)``) through the MLP.
- RMSNorm upcasts to fp32 (x.float(), x·rsqrt) before the weight multiply.
- The LM head sees the last position (generate passes ``logits_to_keep=1``); generate copies the
  logits to fp32 (``.to(copy=True, dtype=float32)``) and each logits processor clones and masks
  them: MinLengthLogitsProcessor and MinNewTokensLengthLogitsProcessor, added when the model has
  an EOS token and min_length / min_new_tokens are set (generation/utils.py
  ``_get_logits_processor``, generation/logits_process.py).
- generate's own tensors: input_ids and the attention mask [b, context] int64, grown by cat.

The line items: a step's peak is its largest moment plus the cache it holds at that moment; the
activation line is that minus the KV line (the cache when generate returns), so weights + KV +
activations is the peak of the run. In prefill the cache holds the prompt (less than the KV line
by the b × (new - 1) tokens still to come; a sliding layer more: the whole prompt's storage behind
its window view until the first decode step); after a decode step a sliding layer's storage is
one token more than its view.
"""

from __future__ import annotations

from planner.spec import ModelSpec

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def kv_heads(spec: ModelSpec, tp: int) -> int:
    """K/V heads transformers caches per rank: Falcon's new decoder architecture (two norms per
    parallel block: Falcon-40B/180B) broadcasts the KV heads to every query head before the cache
    (models/falcon/modeling_falcon.py ``_split_heads``)."""
    if spec.parallel_attn and spec.parallel_norms == 2 and spec.kv_heads > 1:
        return spec.heads // tp
    return max(1, spec.kv_heads // tp)


def kv_tokens(eng, wl, window: int) -> int:
    """Tokens per sequence one layer's cache holds when generate returns: the prompt and every
    generated token but the last (sampled, never fed back); a sliding layer the last window - 1
    of them, the view ``DynamicSlidingWindowLayer`` keeps (cache_utils.py). Chunked layers (Llama
    4) get the same layer with the chunk as the window (``get_layer_types_and_kwargs``)."""
    held = wl.context - min(wl.new_tokens, 1)
    if window and eng.sliding_window_cache:
        held = min(held, window + eng.window_extra_tokens)
    return held


def _stored_tokens(wl, window: int, prefill: bool) -> int:
    """Tokens of storage behind one layer's cache at a step's peak: a sliding layer's view is a
    slice of its last cat, so after the prefill it holds the whole prompt and after a decode step
    the window (one token more than the view)."""
    if prefill:
        return wl.prompt_tokens
    held = wl.context - 1
    return min(held, window) if window else held


def _kv_bytes(spec: ModelSpec, step, tokens_of) -> int:
    """Cache bytes over the stage's layers, ``tokens_of(window)`` tokens per sequence each."""
    lo, hi = step.layers
    per = 2 * kv_heads(spec, step.tp) * step.kvf.vector_bytes(spec.head_dim) * step.seqs
    if spec.mla:
        per = step.kvf.vector_bytes(spec.kv_lora_rank + spec.qk_rope_dim) * step.seqs
    return sum(per * tokens_of(spec.window_of(i)) for i in range(lo, hi))


class _Moments:
    def __init__(self):
        self.best: tuple[int, dict[str, int]] = (0, {})

    def at(self, event: str, parts: dict[str, int]) -> None:
        total = sum(parts.values())
        if total > self.best[0]:
            self.best = (total, {f"{event}.{k}": v for k, v in parts.items() if v})


def activation_peak(step) -> tuple[int, dict[str, int]]:
    spec, wl, eng = step.spec, step.workload, step.eng
    a = _BYTES.get(step.fmt.key, 2)
    up = 0 if a == 4 else 4  # RMSNorm's x.float() copy
    b, s_q, T, tp = step.seqs, step.s_q, step.tokens, step.tp
    prefill = s_q == wl.prompt_tokens and step.s_kv == wl.prompt_tokens
    if not prefill and wl.new_tokens < 2:  # one new token: generate runs the prefill only
        return 0, {}
    h = spec.hidden
    hd = spec.head_dim
    lo, hi = step.layers
    n_layers = hi - lo
    H = T * h * a
    ctx = wl.context
    past = 0 if prefill else ctx - 2  # decode: the last step feeds token context - 2
    m = _Moments()

    # generate's bookkeeping: input_ids, the attention mask and the positions [b, context] int64
    books = {"generate_ids": 3 * b * ctx * 8}
    base = dict(books)
    if n_layers:
        rope = 2 * b * s_q * (spec.qk_rope_dim if spec.mla else hd) * a if spec.rope_theta else 0
        base.update({"inputs_embeds": H, "rope_cos_sin": rope})
        if n_layers > 1:  # the loop's reference to the layer input (layer 0's is inputs_embeds)
            base["layer_input"] = H
        eager = eng.attention == "eager" or (spec.attn_softcap and not eng.fused_softcap)
        probs_held = 0
        kinds = sorted({spec.window_of(i) for i in range(lo, hi)})
        # create_causal_mask / create_sliding_window_causal_mask: one mask per layer kind, held
        # for the whole forward (masking_utils.py): eager a float [b, 1, s_q, n]; SDPA none
        # (is_causal) unless a sliding window must be drawn: a bool [1, 1, s_q, n]
        for w in kinds:
            n = _keys(w, prefill, s_q, past)
            if w and (eager or _sdpa_masked(w, prefill, s_q, past)):
                # sdpa_mask: the causal test, the window test and their and (bool [s_q, n])
                # (before the RoPE tables and the first layer)
                m.at("mask_build", {**books, "inputs_embeds": H, **{k: v for k, v in base.items()
                                                                   if k.startswith("mask")},
                                    "mask_bool": 3 * s_q * n})
            if eager:
                base[f"mask_w{w}" if w else "mask"] = b * s_q * n * a
            elif _sdpa_masked(w, prefill, s_q, past):
                base[f"mask_w{w}"] = s_q * n
        for w in kinds:
            probs_held = max(probs_held, _attention(m, step, base, w, eager, prefill, past, a, up))
        mlp_base = {**base, "attn_residual": H, "normed": H, "attn_probs": probs_held}
        m.at("post_attention_norm", {**base, "attn_residual": H, "attn_probs": probs_held,
                                     "norm_fp32": T * h * (up + 4), "normed": H})
        dense = spec.layers - spec.moe_layer_count()
        F_ = spec.ffn // tp
        if dense:
            if spec.gated_ffn:  # act(gate) * up: gate's activation, up, the product
                m.at("mlp.act_mul", {**mlp_base, "mlp_act": T * F_ * a, "mlp_up": T * F_ * a,
                                     "mlp_prod": T * F_ * a})
            else:
                m.at("mlp.act", {**mlp_base, "mlp_fc1": T * F_ * a, "mlp_act": T * F_ * a})
            m.at("mlp.down", {**mlp_base, "mlp_prod": T * F_ * a, "mlp_down": H})
        if spec.moe_layer_count():
            _moe(m, step, mlp_base, a)
    if step.has_head:
        V = step.vocab_pad // tp
        last = b * h * a
        if n_layers:
            m.at("final_norm", {**books, "inputs_embeds": H, "final_in": H,
                                "norm_fp32": T * h * (up + 4), "normed": H})
        m.at("lm_head", {**books, "inputs_embeds": H if n_layers else 0, "normed": H,
                         "logits": b * V * a, "last_hidden": last if spec.tied_embeddings else 0})
        # generate: fp32 copy of the last logits, then each processor clones and masks them
        m.at("logits_processors", {**books, "logits": b * V * a, "logits_fp32": b * V * 4,
                                   "processor_clone": b * V * 4, "processor_out": b * V * 4,
                                   "vocab_ids": V * 9})
    peak, parts = m.best
    # the cache at this step against the KV line (the cache when generate returns)
    final = _kv_bytes(spec, step, lambda w: kv_tokens(eng, wl, w))
    now = _kv_bytes(spec, step, lambda w: _stored_tokens(wl, w, prefill))
    if now != final:
        parts["cache_vs_kv_line"] = now - final
    return max(0, peak + now - final), parts


def _attention(m: _Moments, step, base: dict, window: int, eager: bool, prefill: bool, past: int,
               a: int, up: int) -> int:
    """One attention layer of a kind (window 0 = full); returns the probabilities it leaves
    held through the MLP (eager)."""
    spec, tp = step.spec, step.tp
    b, s_q, T = step.seqs, step.s_q, step.tokens
    h, hd = spec.hidden, spec.head_dim
    heads = spec.heads // tp
    kv = kv_heads(spec, tp)
    H = T * h * a
    Q, K = T * heads * hd * a, T * kv * hd * a
    # keys attended: prefill the step's own; decode the cache after the write (a sliding layer:
    # its window - 1 kept tokens + the new one)
    n = _keys(window, prefill, s_q, past)
    live = {**base, "normed": H}
    m.at("input_norm", {**base, "norm_fp32": T * h * (up + 4), "normed": H})
    qkv = {"q": Q, "k": K, "v": K}
    if spec.qk_norm:
        m.at("attn.q_norm", {**live, **qkv, "norm_fp32": T * heads * hd * (up + 4), "q_normed": Q})
    m.at("attn.rope_q", {**live, **qkv, "q_cos": Q, "q_rot_sin": Q, "q_embed": Q})
    m.at("attn.rope_k", {**live, "q": Q, "q_embed": Q, "k": K, "v": K, "k_cos": K,
                         "k_rot_sin": K, "k_embed": K})
    after = {**live, "q_embed": Q}
    if prefill:  # cat([empty, k]): the cache's copy beside the step's K and V
        m.at("attn.cache_write", {**after, "k_embed": K, "v": K})
    else:
        old = b * kv * (n - 1) * hd * a
        if window:  # both old K and V beside the new cat outputs
            m.at("attn.cache_cat", {**after, "k_embed": K, "v": K, "cache_old_kv": 2 * old})
        else:
            m.at("attn.cache_cat", {**after, "k_embed": K, "v": K, "cache_old_k": old})
    gqa = kv < heads
    masked = eager or _sdpa_masked(window, prefill, s_q, past)
    # SDPA with a mask cannot use enable_gqa: prefill repeats K/V, decode packs q (views)
    rep = 2 * b * heads * n * hd * a if gqa and (eager or (masked and prefill)) else 0
    if rep:
        after["repeat_kv"] = rep
    O = b * heads * s_q * spec.v_dim * a
    if eager:
        S = b * heads * s_q * n
        m.at("attn.scores_scale", {**after, "scores": S * a, "scaled": S * a})
        m.at("attn.softmax", {**after, "masked_scores": S * a, "probs_fp32": S * 4,
                              "probs": S * a if a != 4 else 0})
        m.at("attn.pv", {**after, "probs": S * a, "attn_out": O, "attn_out_t": O})
        m.at("attn.o_proj", {**live, "probs": S * a, "attn_out": O, "o_proj": H})
        return S * a
    m.at("attn.sdpa", {**after, "attn_out": O})
    m.at("attn.o_proj", {**live, "attn_out": O, "o_proj": H})
    return 0


def _keys(window: int, prefill: bool, s_q: int, past: int) -> int:
    """Keys one layer attends to: prefill the step's own; decode the cache after the write (a
    sliding layer: its window - 1 kept tokens and the new one)."""
    if prefill:
        return s_q
    return min(past, window - 1) + 1 if window else past + 1


def _sdpa_masked(window: int, prefill: bool, s_q: int, past: int) -> bool:
    """masking_utils._ignore_causal_mask_sdpa: a sliding layer whose keys reach the window needs
    a drawn mask; otherwise SDPA's is_causal does (no padding in generate's all-ones mask)."""
    return bool(window) and _keys(window, prefill, s_q, past) >= window


def _moe(m: _Moments, step, base: dict, a: int) -> None:
    """Qwen3-MoE style sparse block in transformers 5.24.0 (integrations/moe.py grouped_mm):
    router logits and fp32 softmax [T, E], top-k, the tokens sorted by expert and gathered
    [T·k, h], gate_up [T·k, 2F], act, product, down [T·k, h], weighted, scattered back and
    summed [T, h]."""
    spec, T, tp = step.spec, step.tokens, step.tp
    E, k = spec.experts, spec.experts_per_token
    F_ = (spec.expert_ffn or spec.ffn) // tp
    h = spec.hidden
    Tk = T * k
    route = {"router_logits": T * E * a, "topk_ids": Tk * 8, "topk_weights": Tk * 4,
             "sort": 2 * Tk * 8, "inverse_perm": Tk * 8}
    m.at("moe.router", {**base, "router_logits": T * E * a, "router_probs": T * E * 4,
                        "topk": Tk * (4 + 8)})
    m.at("moe.gate_up", {**base, **route, "gathered": Tk * h * a, "gate_up": Tk * 2 * F_ * a,
                         "act": Tk * F_ * a, "prod": Tk * F_ * a})
    m.at("moe.down", {**base, **route, "gathered": Tk * h * a, "prod": Tk * F_ * a,
                      "down": Tk * h * a})
    # weighted by the routing weights, then un-sorted (index) before the sum over k
    m.at("moe.unsort", {**base, **route, "gathered": Tk * h * a, "down": Tk * h * a,
                        "weighted": Tk * h * a, "unsorted": Tk * h * a})
    m.at("moe.sum", {**base, **route, "unsorted": Tk * h * a, "summed": T * h * a})
    if spec.shared_experts:
        F_s = (spec.shared_width or spec.ffn) // tp
        m.at("moe.shared", {**base, **route, "summed": T * h * a, "shared_act": T * F_s * a,
                            "shared_up": T * F_s * a, "shared_prod": T * F_s * a})
