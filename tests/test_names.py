"""planner/names.py: every checkpoint tensor of each new architecture maps onto the inventory.

Safetensors: a tiny random model of each architecture, built by transformers itself and saved with
``save_pretrained``, must map tensor for tensor onto the inventory of the spec its config.json
gives (no checkpoint tensor unmapped, no inventory tensor uncovered, elements equal), and the
runtime's reader must return every inventory tensor with its shape. Stacked expert tensors are
also checked for meaning: the per-expert tensors the names give reproduce transformers' own
expert forward.

GGUF: the names are checked against the ``gguf`` package (0.19.0): every tensor its
``MODEL_TENSORS`` lists for an architecture is known here, and a GGUF written from the tiny
model the way llama.cpp's convert_hf_to_gguf.py writes one (names from gguf's ``TensorNameMap``,
experts stacked, gpt-oss's gate_up and DeepSeek's kv_b split, Llama q/k permuted, Gemma norms
stored 1 + w) reads back through names.py as exactly the safetensors' inventory tensors.
"""

from __future__ import annotations

import json
import re
import types

import pytest

from planner import names
from planner.inspect import compare_inventory
from planner.spec import inventory

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BASE = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, head_dim=16)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
CASES = {
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, **MOE),
    "gemma2": {},
    "gemma3_text": {},
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2),
    "llama4_text": dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128,
                        interleave_moe_layer_step=2),
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2, lm_head_bias=True,
                   attention_bias=True),
    "deepseek_v2": dict(n_routed_experts=4, first_k_dense_replace=1, n_shared_experts=1,
                        kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=16,
                        v_head_dim=16, n_group=1, topk_group=1, **MOE),
    "glm": dict(pad_token_id=0),
    "glm4": dict(pad_token_id=0),
    "glm4_moe": dict(n_routed_experts=4, first_k_dense_replace=1, n_shared_experts=1, n_group=1,
                     topk_group=1, use_qk_norm=True, **MOE),
}

_built: dict[str, tuple] = {}


def _spec_of(cfg: dict, name: str, where: str):
    from planner.sources import spec_from_config

    # the config as transformers 5.24 saved it (Qwen3-MoE's expert count as num_local_experts)
    return spec_from_config(dict(cfg), name, where)


def built(mt: str, tmp_path_factory):
    """(model, folder, spec) of a tiny random ``mt`` model saved with save_pretrained."""
    if mt not in _built:
        torch.manual_seed(0)
        cfg = transformers.AutoConfig.for_model(mt, **{**BASE, **CASES[mt]})
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():  # norms and biases initialise to constants: make every value count
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        folder = tmp_path_factory.mktemp(mt)
        model.save_pretrained(str(folder))
        saved = json.loads((folder / "config.json").read_text())
        _built[mt] = (model, folder, _spec_of(saved, mt, str(folder)))
    return _built[mt]


@pytest.mark.parametrize("mt", list(CASES))
def test_saved_checkpoint_maps_onto_the_inventory(mt, tmp_path_factory):
    from planner.checkpoint import read_checkpoint

    _, folder, spec = built(mt, tmp_path_factory)
    ckpt = read_checkpoint(str(folder))
    result = compare_inventory(spec, ckpt)
    assert result["matches"], result["mismatches"]
    assert result["checkpoint_params"] == result["params"] == sum(t.numel for t in ckpt.tensors)
    # each checkpoint tensor maps (no name left to a fallback that happens to be an inventory name)
    inv = {t.name for t in inventory(spec)}
    for t in ckpt.tensors:
        ps = names.pieces(spec, t.name, "safetensors")
        assert ps and all(p.target in inv for p in ps), t.name


@pytest.mark.parametrize("mt", list(CASES))
def test_runtime_reader_returns_every_inventory_tensor(mt, tmp_path_factory):
    pytest.importorskip("safetensors")
    from runtime.weights import SafetensorsSource, check_against

    from safetensors import safe_open

    _, folder, spec = built(mt, tmp_path_factory)
    src = SafetensorsSource(str(folder), spec)
    check_against(spec, src)
    for t in inventory(spec):
        assert tuple(src.get(t.name).shape) == t.shape, t.name
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for k in f.keys():  # a checkpoint tensor that is one inventory tensor: the same values
            (p,) = names.pieces(spec, k, "safetensors")[:1]
            if names.canonical_name(spec, k, "safetensors") and not p.ops:
                assert torch.equal(src.get(p.target), f.get_tensor(k).float()), k


def test_gemma_norms_land_where_gemma_applies_them(tmp_path_factory):
    """Gemma's post_attention_layernorm runs AFTER attention (the inventory's sandwich
    post_self_attn_layernorm); its pre_feedforward_layernorm is the pre-FFN norm."""
    spec = built("gemma2", tmp_path_factory)[2]
    to = {n: names.canonical_name(spec, f"model.layers.3.{n}.weight", "safetensors")
          for n in ("post_attention_layernorm", "pre_feedforward_layernorm",
                    "post_feedforward_layernorm", "input_layernorm")}
    assert to == {"post_attention_layernorm": "model.layers.3.post_self_attn_layernorm.weight",
                  "pre_feedforward_layernorm": "model.layers.3.post_attention_layernorm.weight",
                  "post_feedforward_layernorm": "model.layers.3.post_mlp_layernorm.weight",
                  "input_layernorm": "model.layers.3.input_layernorm.weight"}


def test_stacked_experts_mean_what_transformers_computes(tmp_path_factory):
    """gpt-oss's interleaved gate_up (gate = [..., ::2]) and Llama 4's halves (chunk(2)), read
    through names.py, reproduce each expert of transformers' own expert modules."""
    from runtime.weights import SafetensorsSource

    for mt, layer in (("gpt_oss", 0), ("llama4_text", 1)):
        model, folder, spec = built(mt, tmp_path_factory)
        src = SafetensorsSource(str(folder), spec)
        block = model.model.layers[layer]
        experts = (block.mlp if mt == "gpt_oss" else block.feed_forward).experts
        x = torch.randn(3, spec.hidden)
        p = f"model.layers.{layer}.mlp.experts."
        with torch.no_grad():
            for e in range(spec.experts):
                wg, wu, wd = (src.get(f"{p}{e}.{k}_proj.weight") for k in ("gate", "up", "down"))
                if mt == "gpt_oss":
                    bg, bu, bd = (src.get(f"{p}{e}.{k}_proj.bias") for k in ("gate", "up", "down"))
                    ref = experts(x, torch.full((3, 1), e), torch.ones(3, 1))
                    g = (x @ wg.T + bg).clamp(max=experts.limit)
                    u = (x @ wu.T + bu).clamp(-experts.limit, experts.limit)
                    ours = ((u + 1) * g * torch.sigmoid(g * experts.alpha)) @ wd.T + bd
                else:
                    xs = torch.zeros(spec.experts, 3, spec.hidden)
                    xs[e] = x
                    ref = experts(xs.view(-1, spec.hidden)).view(spec.experts, 3, -1)[e]
                    ours = (torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)) @ wd.T
                torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# -- multimodal checkpoints: the text model under language_model. ------------------------------

V = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
         image_size=32, patch_size=8)
T = {**BASE, "vocab_size": 300}
MULTIMODAL = {
    "gemma3": dict(text_config={**T, "model_type": "gemma3_text"},
                   vision_config={**V, "model_type": "siglip_vision_model"},
                   mm_tokens_per_image=4, image_token_index=299, boi_token_index=297,
                   eoi_token_index=298),
    "mistral3": dict(text_config={**T, "model_type": "mistral"},
                     vision_config={**V, "model_type": "pixtral", "head_dim": 16},
                     image_token_index=299, tie_word_embeddings=False),
    "llama4": dict(text_config={**T, "model_type": "llama4_text", "num_local_experts": 2,
                                "intermediate_size_mlp": 128, "interleave_moe_layer_step": 2},
                   vision_config={**V, "model_type": "llama4_vision_model",
                                  "vision_output_dim": 32, "projector_input_dim": 32,
                                  "projector_output_dim": 64, "pixel_shuffle_ratio": 0.5},
                   image_token_index=299, boi_token_index=297, eoi_token_index=298),
}


@pytest.mark.parametrize("mt", list(MULTIMODAL))
def test_multimodal_checkpoint_text_model_maps(mt, tmp_path):
    """Gemma 3, Mistral 3 and Llama 4 checkpoints hold the text model under
    ``language_model.model.`` (and ``language_model.lm_head.``); those map onto the text
    inventory. The vision tower keeps its own names (planner/vision.py lists them)."""
    from planner.checkpoint import read_checkpoint

    cfg = transformers.AutoConfig.for_model(mt, **MULTIMODAL[mt])
    transformers.AutoModelForImageTextToText.from_config(cfg).save_pretrained(str(tmp_path))
    ckpt = read_checkpoint(str(tmp_path))
    spec = _spec_of(ckpt.config, mt, str(tmp_path))
    text = [t for t in ckpt.tensors if not t.name.startswith(names.VISION_PREFIXES)]
    assert any(t.name.startswith("language_model.model.layers.") for t in text)
    assert len(text) < len(ckpt.tensors)  # the vision tower is there, under its own names
    if spec.vision is not None:  # the inventory lists the tower as the checkpoint names it
        result = compare_inventory(spec, ckpt)
    else:
        result = compare_inventory(spec, types.SimpleNamespace(format="safetensors", tensors=text))
    assert result["matches"], result["mismatches"]
    # transformers 5's in-memory layout names the same tensors model.language_model.*
    for t in text:
        alt = t.name.replace("language_model.model.", "model.language_model.")
        assert names.pieces(spec, alt, "safetensors") == names.pieces(spec, t.name, "safetensors")


# -- GGUF ---------------------------------------------------------------------------------------

gguf = pytest.importorskip("gguf")
ARCH = {"qwen3": "QWEN3", "qwen3_moe": "QWEN3MOE", "gemma2": "GEMMA2", "gemma3": "GEMMA3",
        "gpt_oss": "GPT_OSS", "llama4": "LLAMA4", "phimoe": "PHIMOE", "deepseek_v2": "DEEPSEEK2",
        "glm4": "GLM4", "glm4_moe": "GLM4_MOE", "llama": "LLAMA", "mistral": "LLAMA",
        "mistral3": "MISTRAL3", "qwen2": "QWEN2", "phi3": "PHI3"}
"""Family -> gguf.MODEL_ARCH member (the architecture llama.cpp's converter writes)."""


@pytest.mark.parametrize("family", list(ARCH))
def test_every_gguf_tensor_of_the_architecture_is_named(family):
    from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

    from planner.spec import ModelSpec

    arch = getattr(MODEL_ARCH, ARCH[family])
    moe = dict(experts=4, experts_per_token=2, shared_experts=1)
    mla = dict(kv_lora_rank=16, q_lora_rank=24, qk_rope_dim=8, qk_nope_dim=16, v_head_dim=16) \
        if family == "deepseek_v2" else {}
    spec = ModelSpec(name="t", family=family, layers=2, hidden=64, heads=4, kv_heads=2,
                     head_dim=16, ffn=96, vocab=128, **moe, **mla)
    unknown = []
    for tensor in MODEL_TENSORS[arch]:
        base = TENSOR_NAMES[tensor].format(bid=0)
        known = [n for n in (base + ".weight", base + ".bias")
                 if names.pieces(spec, n, "gguf") or names.ignored(spec, n, "gguf")]
        if not known:
            unknown.append(base)
    assert not unknown, f"{family}: GGUF tensors names.py does not know: {unknown}"


def _as_gguf(spec, hf: dict) -> dict:
    """The tensors llama.cpp's convert_hf_to_gguf.py writes for HF tensors ``hf`` (name -> fp32
    tensor), names from gguf's own TensorNameMap (ggml-org/llama.cpp @a458664f: GptOssModel,
    Llama4Model, DeepseekV2Model / Glm4MoeModel expert stacking and kv_b split, Gemma2Model /
    Gemma3Model norm + 1, LlamaModel.permute)."""
    from gguf.constants import MODEL_ARCH

    tmap = gguf.get_tensor_name_map(getattr(MODEL_ARCH, ARCH[spec.family]), spec.layers)
    out, stacks = {}, {}

    def put(name, x):
        for suffix in (".weight", ".bias", "_bias"):
            g = tmap.get_name(name, try_suffixes=(suffix,))
            if g is not None:
                out[g.removesuffix("_bias") + ".bias" if suffix == "_bias" else g] = x
                return
        raise AssertionError(f"gguf's TensorNameMap does not know {name}")

    for name, x in hf.items():
        name = name.replace("language_model.", "")
        if spec.family in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            x = x + 1
        if spec.family in ("llama", "mistral") and name.endswith(("q_proj.weight",
                                                                   "k_proj.weight")):
            n = spec.heads if "q_proj" in name else spec.kv_heads
            x = x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
        m = re.match(r"^(.*\.)(?:mlp|block_sparse_moe)\.experts\.(\d+)\.(\w+)\.weight$", name)
        if m:  # per-expert tensors: stacked along a new dim 0
            w = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}.get(m.group(3), m.group(3))
            stacks.setdefault(f"{m.group(1)}mlp.experts.{w}.weight", {})[int(m.group(2))] = x
            continue
        if spec.family == "gpt_oss" and ".experts." in name:
            if name.endswith("gate_up_proj_bias"):
                put(name.replace("gate_up_proj_bias", "gate_proj.bias"), x[..., ::2])
                put(name.replace("gate_up_proj_bias", "up_proj.bias"), x[..., 1::2])
            elif name.endswith("gate_up_proj"):
                t = x.transpose(-1, -2)
                put(name.replace("gate_up_proj", "gate_proj.weight"), t[:, ::2, :])
                put(name.replace("gate_up_proj", "up_proj.weight"), t[:, 1::2, :])
            elif name.endswith("down_proj_bias"):
                put(name.replace("down_proj_bias", "down_proj.bias"), x)
            else:
                put(name + ".weight", x.transpose(-1, -2))
            continue
        if spec.family == "gpt_oss" and name.endswith("sinks"):
            name += ".weight"
        if spec.family == "llama4" and name.endswith("experts.gate_up_proj"):
            gate, up = x.transpose(-1, -2).split(x.shape[-1] // 2, dim=-2)
            put(name.replace("gate_up_proj", "gate_proj.weight"), gate)
            put(name.replace("gate_up_proj", "up_proj.weight"), up)
            continue
        if spec.family == "llama4" and name.endswith("experts.down_proj"):
            name, x = name + ".weight", x.transpose(-1, -2)
        if name.endswith("kv_b_proj.weight"):
            nope, v = spec.qk_nope_dim, spec.v_head_dim
            kv_b = x.view(spec.heads, nope + v, x.shape[-1])
            k_b, v_b = torch.split(kv_b, [nope, v], dim=1)
            put(name.replace("kv_b_proj", "k_b_proj"), k_b.transpose(1, 2))
            put(name.replace("kv_b_proj", "v_b_proj"), v_b)
            continue
        put(name, x)
    for name, by_e in stacks.items():
        put(name, torch.stack([by_e[e] for e in sorted(by_e)]))
    return out


GGUF_CASES = [mt for mt in CASES if mt != "glm"]  # GlmForCausalLM converts to llama.cpp's chatglm


@pytest.mark.parametrize("mt", GGUF_CASES)
def test_gguf_written_as_llama_cpp_does_reads_back_the_inventory(mt, tmp_path_factory, tmp_path):
    from safetensors.torch import load_file

    from planner.checkpoint import read_checkpoint
    from runtime.weights import GGUFSource, SafetensorsSource

    _, folder, spec = built(mt, tmp_path_factory)
    hf = {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}
    tensors = _as_gguf(spec, hf)
    path = str(tmp_path / "model.gguf")
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, ARCH[spec.family])])
    for name, x in tensors.items():
        w.add_tensor(name, x.contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    result = compare_inventory(spec, read_checkpoint(path))
    assert result["matches"], result["mismatches"]
    st, gg = SafetensorsSource(str(folder), spec), GGUFSource(path, spec)
    assert gg.shapes == st.shapes
    for t in inventory(spec):
        torch.testing.assert_close(gg.get(t.name), st.get(t.name), rtol=0, atol=1e-6,
                                   msg=t.name)


def _mxfp4_checkpoint(folder, spec, out):
    """The tiny gpt-oss checkpoint with its expert weights as openai/gpt-oss-* store them: MXFP4
    blocks (E, out rows, in / 32, 16) uint8 and scales (E, out rows, in / 32) uint8, gate_up rows
    interleaved; biases as they are."""
    from safetensors.torch import load_file, save_file

    ck = load_file(str(folder / "model.safetensors"))
    E, h, f = spec.experts, spec.hidden, spec.expert_ffn or spec.ffn
    g = torch.Generator().manual_seed(0)
    for i in range(spec.layers):
        p = f"model.layers.{i}.mlp.experts."
        del ck[p + "gate_up_proj"], ck[p + "down_proj"]
        for part, rows, cols in (("gate_up_proj", 2 * f, h), ("down_proj", h, f)):
            ck[p + part + "_blocks"] = torch.randint(0, 256, (E, rows, cols // 32, 16),
                                                     generator=g, dtype=torch.uint8)
            ck[p + part + "_scales"] = torch.randint(100, 130, (E, rows, cols // 32),
                                                     generator=g, dtype=torch.uint8)
    out.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in ck.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text((folder / "config.json").read_text())
    return ck


def test_gpt_oss_mxfp4_names_cover_the_experts(tmp_path_factory, tmp_path):
    """The MXFP4 blocks hold the experts' values (two per byte), the scales are their scales:
    the inventory is covered exactly, stored bytes are the file's, and the runtime names the
    format it cannot load yet instead of loading garbage."""
    from planner.checkpoint import read_checkpoint
    from planner.inspect import stored_bytes
    from runtime.model import RuntimeError_
    from runtime.weights import SafetensorsSource, check_against

    _, folder, spec = built("gpt_oss", tmp_path_factory)
    _mxfp4_checkpoint(folder, spec, tmp_path / "mx")
    ckpt = read_checkpoint(str(tmp_path / "mx"))
    result = compare_inventory(spec, ckpt)
    assert result["matches"], result["mismatches"]
    assert result["scales_excluded"] == 2 * spec.layers
    stored = stored_bytes(types.SimpleNamespace(checkpoint=ckpt, spec=spec, path="mx"))
    assert set(stored) == {t.name for t in inventory(spec)}
    assert sum(stored.values()) == sum(t.nbytes for t in ckpt.tensors)
    # one expert's gate: half the blocks' rows and half the scales' rows of its expert
    e0 = stored["model.layers.0.mlp.experts.0.gate_proj.weight"]
    f, h = spec.expert_ffn, spec.hidden
    assert e0 == f * h // 2 + f * h // 32
    src = SafetensorsSource(str(tmp_path / "mx"), spec)
    check_against(spec, src)
    with pytest.raises(RuntimeError_, match="MXFP4"):
        src.get("model.layers.0.mlp.experts.0.gate_proj.weight")


def test_stored_bytes_share_stacked_and_fused_tensors(tmp_path_factory):
    """--weights stored on a checkpoint with stacked experts (Llama 4) and fused gate_up (GLM-4):
    every inventory tensor gets its exact share, the shares sum to the file's bytes."""
    from planner.checkpoint import read_checkpoint
    from planner.inspect import stored_bytes

    for mt in ("llama4_text", "glm4"):
        _, folder, spec = built(mt, tmp_path_factory)
        ckpt = read_checkpoint(str(folder))
        stored = stored_bytes(types.SimpleNamespace(checkpoint=ckpt, spec=spec, path=mt))
        assert sum(stored.values()) == sum(t.nbytes for t in ckpt.tensors)
        for t in inventory(spec):  # the tiny models are fp32: 4 bytes an element
            assert stored[t.name] == 4 * t.numel, t.name


def test_mtp_layers_and_buffers_are_excluded_not_mismatched(tmp_path_factory):
    """DeepSeek-V3 / GLM-4.5 multi-token-prediction layers (model.layers.{L}) and GGUF rotary
    factor tables are counted as excluded; the same index in a family without MTP is a mismatch."""
    spec = built("glm4_moe", tmp_path_factory)[2]
    assert spec.mtp_layers == 1  # transformers' Glm4MoeConfig num_nextn_predict_layers
    assert names.ignored(spec, f"model.layers.{spec.layers}.eh_proj.weight", "safetensors") == "mtp"
    past = f"model.layers.{spec.layers + spec.mtp_layers}.eh_proj.weight"
    assert names.ignored(spec, past, "safetensors") is None
    assert names.ignored(spec, f"blk.{spec.layers - 1}.nextn.eh_proj.weight", "gguf") == "mtp"
    assert names.ignored(spec, "rope_freqs.weight", "gguf") == "buffer"
    qwen = built("qwen3", tmp_path_factory)[2]
    assert names.ignored(qwen, f"model.layers.{qwen.layers}.mlp.up_proj.weight", "x") is None


def test_llama4_rope_rows_give_transformers_scores(tmp_path_factory):
    """Llama 4's q/k, read through names.py and rotated rotate-half (as the runtime does for
    every family), give the attention scores transformers' complex (adjacent-pair) RoPE gives."""
    from transformers.models.llama4 import modeling_llama4 as ml

    from runtime.weights import SafetensorsSource

    model, folder, spec = built("llama4_text", tmp_path_factory)
    src = SafetensorsSource(str(folder), spec)
    attn = model.model.layers[0].self_attn
    s, hd = 5, spec.head_dim
    x = torch.randn(1, s, spec.hidden)
    pos = torch.arange(s)[None]
    freqs = model.model.rotary_emb(x, pos)  # complex (1, s, hd / 2)
    with torch.no_grad():
        q = attn.q_proj(x).view(1, s, spec.heads, hd)
        k = attn.k_proj(x).view(1, s, spec.kv_heads, hd)
        q_ref, k_ref = ml.apply_rotary_emb(q, k, freqs)
        q2 = (x @ src.get("model.layers.0.self_attn.q_proj.weight").T).view(1, s, spec.heads, hd)
        k2 = (x @ src.get("model.layers.0.self_attn.k_proj.weight").T).view(1, s, spec.kv_heads, hd)
        ang = torch.cat([freqs.angle(), freqs.angle()], dim=-1)[:, :, None, :]
        cos, sin = ang.cos() * freqs.abs()[..., :1, None], ang.sin() * freqs.abs()[..., :1, None]

        def rot(t):
            a, b = t[..., :hd // 2], t[..., hd // 2:]
            return t * cos + torch.cat([-b, a], dim=-1) * sin

        g = spec.heads // spec.kv_heads
        ref = torch.einsum("bqhd,bkhd->bhqk", q_ref, k_ref.repeat_interleave(g, 2))
        ours = torch.einsum("bqhd,bkhd->bhqk", rot(q2), rot(k2).repeat_interleave(g, 2))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# Tiny configs with the features the spec does not model yet set to what the runtime builds
# (see the report of issue 10): Gemma's query_pre_attn_scalar = head_dim, Gemma 3's sliding layers'
# own rope base avoided (all layers full), Qwen3-MoE's norm_topk_prob on, GLM-4.5's partial
# rotary off, Llama 4 and DeepSeek-V2 with dense layers only (their routings differ).
E2E = {
    "qwen3": {}, "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3_text": {"query_pre_attn_scalar": 16, "layer_types": ["full_attention"] * 2},
    "qwen3_moe": {"norm_topk_prob": True}, "glm4_moe": {"partial_rotary_factor": 1.0},
    "llama4_text": {"interleave_moe_layer_step": 4},
    "deepseek_v2": {"num_key_value_heads": 4, "first_k_dense_replace": 2},
}


@pytest.mark.parametrize("mt", list(E2E))
def test_runtime_logits_equal_transformers(mt, tmp_path):
    """A tiny checkpoint saved by transformers, loaded by the runtime through names.py, gives
    transformers' logits: the names, the Gemma norm placement, Llama 4's and DeepSeek's rope rows
    and the stacked/fused layouts are the model's."""
    from runtime.model import KVCache, Layout, build
    from runtime.weights import materialize_checkpoint, open_checkpoint

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(mt, **{**BASE, **CASES[mt], **E2E[mt]})
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(str(tmp_path))
    spec = _spec_of(json.loads((tmp_path / "config.json").read_text()), mt, str(tmp_path))
    with torch.no_grad():
        model = build(spec, Layout(weights="fp32", act_dtype=torch.float32))
        materialize_checkpoint(model, open_checkpoint(str(tmp_path), spec))
        got = []
        head = model._lm_head
        model._lm_head = lambda x: got.append(head(x)) or got[-1]
        ids = torch.randint(0, spec.vocab, (1, 9), generator=torch.Generator().manual_seed(1))
        model(ids, KVCache(spec, "fp16", 1, 1, 16, torch.device("cpu")), 0)
        ref = hf(ids).logits[0, -1].float()
    ours = got[-1].reshape(-1, got[-1].shape[-1])[-1][:ref.numel()].float()
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-3)  # the KV cache is fp16


def test_eval_perplexity_equals_transformers_loss_with_final_softcap(tmp_path):
    """runtime.eval's perplexity of a tiny Gemma 2 (a strong final-logit softcap, so leaving it
    out moves the loss) equals transformers' own loss on the same tokens, and a format scored
    against itself as the base has KL 0 and full agreement, twice (the base's logits are kept)."""
    from runtime.eval import load_model, score
    from runtime.weights import open_checkpoint

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(
        "gemma2", **{**BASE, **CASES["gemma2"], **E2E["gemma2"]}, final_logit_softcapping=2.0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        hf.model.embed_tokens.weight.mul_(100)  # the tied head's logits well past the cap
    hf.save_pretrained(str(tmp_path))
    spec = _spec_of(json.loads((tmp_path / "config.json").read_text()), "gemma2", str(tmp_path))
    assert spec.final_softcap == 2.0
    tokens = torch.randint(0, spec.vocab, (24,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = float(hf(tokens[None], labels=tokens[None]).loss)
        uncapped = float(torch.nn.functional.cross_entropy(
            hf.lm_head(hf.model(tokens[None]).last_hidden_state)[0, :-1], tokens[1:]))
        model, _ = load_model(spec, open_checkpoint(str(tmp_path), spec), "fp32", torch.float32,
                              torch.device("cpu"))
        base = score(model, tokens.tolist(), 24, 24, "fp16", torch.device("cpu"))
        again = [score(model, tokens.tolist(), 24, 24, "fp16", torch.device("cpu"), base=base)
                 for _ in range(2)]
    assert abs(uncapped - ref) > 0.1  # the softcap matters on this model
    assert base["nll"] == pytest.approx(ref, abs=2e-3)  # the KV cache is fp16
    for r in again:
        assert r["kl"] == pytest.approx(0.0, abs=1e-6) and r["top1_agreement"] == 1.0
