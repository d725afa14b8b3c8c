"""The checkpoint's own tokenizer, built with the ``tokenizers`` library.

Sources, first that exists wins:

- an explicit ``tokenizer.json`` (``--tokenizer FILE``);
- a GGUF file: its ``tokenizer.ggml.*`` arrays. Model ``gpt2`` is byte-level BPE: ``tokens`` in id
  order are the vocabulary (already in GPT-2's byte-to-unicode alphabet, ``Ġ`` for a space),
  ``merges`` are ``"a b"`` strings in priority order, token type 3 (control) and 4 (user-defined)
  are added as special tokens so they are matched whole. The pre-tokenizer follows llama.cpp's
  ``tokenizer.ggml.pre`` table (``llama-vocab.cpp``): ``smollm`` (and ``starcoder``, ``refact``,
  ``command-r``, ``codeshell``, ``exaone``, ``minerva``) split every digit on its own, then the
  GPT-2 regex; ``default``/``gpt2``: the GPT-2 regex; ``llama-bpe``/``llama3``, ``qwen2``: their
  own regexes. SentencePiece GGUFs (model ``llama``) are refused: give the HF folder instead;
- an HF folder (or a file inside one): ``tokenizer.json`` beside the weights.

A tokenizer whose vocabulary does not fit the model's (ids the embedding does not have, or far
fewer tokens than its rows) is refused (:func:`check_vocab`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class TokenizerError(Exception):
    """A user-facing tokenizer error (one line; exit 2)."""


# GPT-2's pre-tokenizer regex (what tokenizers' ByteLevel(use_regex=True) applies).
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# llama.cpp LLAMA_VOCAB_PRE_TYPE_LLAMA3 / QWEN2 (llama-vocab.cpp).
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
                r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


@dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` and where it came from."""

    tok: object
    source: str
    """What it was built from (for reports)."""
    bos_id: int | None = None
    eos_id: int | None = None
    add_bos: bool = False
    """Whether the checkpoint asks for a BOS token in front of every text."""

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def max_id(self) -> int:
        return max(self.tok.get_vocab(with_added_tokens=True).values())

    def encode(self, text: str) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def _pre_tokenizer(pre: str):
    from tokenizers import Regex, pre_tokenizers as P

    if pre in ("default", "gpt2", "gpt-2", ""):
        return P.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGITS_THEN_GPT2:
        return P.Sequence([P.Digits(individual_digits=True),
                           P.ByteLevel(add_prefix_space=False, use_regex=True)])
    regex = {"llama-bpe": LLAMA3_REGEX, "llama3": LLAMA3_REGEX, "qwen2": QWEN2_REGEX}.get(pre)
    if regex is None:
        raise TokenizerError(
            f"GGUF pre-tokenizer {pre!r} is not built; built: default, gpt2, llama-bpe, qwen2, "
            f"{', '.join(DIGITS_THEN_GPT2)} (or give a tokenizer.json with --tokenizer)")
    return P.Sequence([P.Split(Regex(regex), behavior="isolated", invert=False),
                       P.ByteLevel(add_prefix_space=False, use_regex=False)])


def from_gguf(path: str) -> Tokenizer:
    try:
        import gguf
        reader = gguf.GGUFReader(path)
    except Exception as e:
        raise TokenizerError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None

    def field(key: str, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception as e:
            raise TokenizerError(f"{path}: cannot read {key} ({e})") from None

    model = field("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError(f"{path}: no tokenizer in this GGUF (tokenizer.ggml.model missing); "
                             "give a tokenizer.json with --tokenizer")
    if model != "gpt2":
        raise TokenizerError(f"{path}: GGUF tokenizer model {model!r} is not built (byte-level BPE "
                             "'gpt2' is); give the model's tokenizer.json with --tokenizer")
    tokens = field("tokenizer.ggml.tokens")
    merges = field("tokenizer.ggml.merges")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(f"{path}: tokenizer.ggml.tokens is missing or empty")
    if not isinstance(merges, list):
        raise TokenizerError(f"{path}: tokenizer.ggml.merges is missing (a BPE tokenizer needs it)")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    pre = field("tokenizer.ggml.pre", "default")

    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders
    from tokenizers.models import BPE

    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise TokenizerError(f"{path}: tokenizer.ggml.merges entry {m!r} is not 'a b'")
        pairs.append((a, b))
    tok = HFTokenizer(BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(str(pre))
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, ty in enumerate(types) if int(ty) in (3, 4)]
    if special:
        tok.add_special_tokens(special)

    def opt_int(key):
        v = field(key)
        return int(v) if isinstance(v, int) else None

    return Tokenizer(tok, f"{os.path.basename(path)} (GGUF {model}, pre {pre})",
                     opt_int("tokenizer.ggml.bos_token_id"), opt_int("tokenizer.ggml.eos_token_id"),
                     bool(field("tokenizer.ggml.add_bos_token", False)))


def from_json(path: str) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_file(path)
    except Exception as e:
        raise TokenizerError(f"{path}: not a readable tokenizer.json ({str(e)[:200]})") from None
    bos = eos = None
    add_bos = False
    cfg = os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer_config.json")
    if os.path.isfile(cfg):
        import json
        try:
            with open(cfg) as f:
                c = json.load(f)
        except (OSError, ValueError):
            c = {}

        def tid(v):
            if isinstance(v, dict):
                v = v.get("content")
            return tok.token_to_id(v) if isinstance(v, str) else None
        bos, eos = tid(c.get("bos_token")), tid(c.get("eos_token"))
        add_bos = bool(c.get("add_bos_token", False))
    return Tokenizer(tok, os.path.abspath(path), bos, eos, add_bos)


def load(checkpoint: str, explicit: str | None = None) -> Tokenizer:
    """The tokenizer for a checkpoint path (GGUF file, safetensors file or folder)."""
    if explicit:
        if not os.path.isfile(explicit):
            raise TokenizerError(f"{explicit}: no such tokenizer file")
        with open(explicit, "rb") as f:
            magic = f.read(4)
        return from_gguf(explicit) if magic == b"GGUF" else from_json(explicit)
    if os.path.isfile(checkpoint):
        with open(checkpoint, "rb") as f:
            if f.read(4) == b"GGUF":
                return from_gguf(checkpoint)
        folder = os.path.dirname(os.path.abspath(checkpoint))
    else:
        folder = checkpoint
    cand = os.path.join(folder, "tokenizer.json")
    if os.path.isfile(cand):
        return from_json(cand)
    raise TokenizerError(f"{checkpoint}: no tokenizer found (no tokenizer.json in {folder}); give "
                         "one with --tokenizer")


def check_vocab(tok: Tokenizer, vocab: int, model: str) -> None:
    """Refuse a tokenizer that does not belong to a model with ``vocab`` embedding rows: ids past
    the table, or fewer than 99% of its rows (HF models pad the table a little, e.g. Qwen2.5's
    151,936 rows for 151,665 tokens; a different tokenizer is off by far more)."""
    n, top = tok.vocab_size, tok.max_id()
    if top >= vocab or n < 0.99 * vocab:
        raise TokenizerError(
            f"the tokenizer ({tok.source}) has {n:,} tokens (largest id {top:,}) but {model} has a "
            f"vocabulary of {vocab:,}: this tokenizer does not belong to this model")
