"""CausalLM: embedding → blocks routed by a strategy → RMSNorm → tied LM head."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from blocks import BLOCKS, AttentionContext, LayerCache, RMSNorm, rope_tables
from recipes.lm.config import ModelConfig
from recipes.lm.checks import check_attention_mask, check_targets, check_tokens
from value_routing.attention import AttentionMask, get_backend
from value_routing.kernels import linear_cross_entropy
from value_routing.strategies import build_strategy
from value_routing.typing import Bool, Float, Int, Shaped, Tensor, shapecheck


@dataclass(frozen=True)
class KVCache:
    """Preallocated per-layer keys/values, which cached positions are real tokens, and how many are filled.

    Forward passes write into the buffers and return a cache with the advanced ``length``;
    the buffers themselves are shared, so keep using the returned cache. ``keep (batch, max_len)``
    records the attention mask of every cached token (True = real, False = padding); ``padded``
    turns on once a forward brought padding, so unpadded decoding keeps the plain causal path.
    """

    layers: tuple[LayerCache, ...]
    length: int = 0
    keep: Bool[Tensor, "batch max_len"] | None = None
    padded: bool = False

    @classmethod
    def allocate(
        cls, cfg: ModelConfig, batch: int, max_len: int | None = None,
        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    ) -> "KVCache":
        max_len = max_len or cfg.max_seq_len
        if max_len > cfg.max_seq_len:
            raise ValueError(f"max_len ({max_len}) must be <= max_seq_len ({cfg.max_seq_len})")
        shape = (batch, max_len, cfg.n_kv_heads, cfg.head_dim)
        layers = tuple(
            LayerCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layers)
        )
        return cls(layers, 0, torch.ones(batch, max_len, dtype=torch.bool, device=device))

    @property
    def capacity(self) -> int:
        return self.layers[0].k.shape[1]


class LMOutput(NamedTuple):
    logits: Float[Tensor, "batch seq vocab"]
    cache: KVCache | None


class CausalLM(nn.Module):
    """Decoder-only language model whose blocks are routed by ``cfg.strategy``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.strategy = build_strategy(cfg.strategy, cfg.dims, **cfg.strategy_options)
        make_block = BLOCKS.lookup(cfg.block)
        self.blocks = nn.ModuleList(
            make_block(cfg.block_spec(i, self.strategy.separate_qkv_norms)) for i in range(cfg.n_layers)
        )
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        # A dtype cast of the model (`.to(torch.bfloat16)`, `.half()`) must not round the RoPE
        # tables: in bf16 the angle tables are off by up to 1/128 relative, which wrecks long
        # positions. They follow the device and stay float32 (float64 when the model is).
        super()._apply(fn, recurse)
        if self.rope_cos.dtype in (torch.float16, torch.bfloat16):
            self.reset_rope()
        return self

    @torch.no_grad()
    def reset_rope(self) -> None:
        """Recompute the RoPE tables (non-persistent buffers) on their device: float64 when the
        model is, else float32 (never a half type; see ``_apply``)."""
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        dtype = torch.float64 if self.rope_cos.dtype == torch.float64 else torch.float32
        self.rope_cos = cos.to(self.rope_cos.device, dtype)
        self.rope_sin = sin.to(self.rope_sin.device, dtype)

    def reset_parameters(self) -> None:
        """N(0, init_std); the output projections N(0, ``cfg.out_proj_std``) (GPT-2's
        ``init_std / √(2L)`` unless set), each block through its own ``reset_parameters``."""
        std = self.cfg.init_std
        for block in self.blocks:
            block.reset_parameters(std, self.cfg.out_proj_std)
        nn.init.normal_(self.embed.weight, std=std)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    @property
    def head_weight(self) -> Float[Tensor, "vocab dim"]:
        """The LM head's weight: the embedding matrix when tied."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        tokens: Int[Tensor, "batch seq"],
        *,
        attention_mask: Tensor | None = None,
        cache: KVCache | None = None,
        seq_lens: Sequence[int] | None = None,
        targets: Int[Tensor, "batch seq"] | None = None,
        validate: bool = True,
    ) -> LMOutput | Float[Tensor, ""]:
        """Logits for every position or, given ``targets``, the mean cross-entropy loss.

        ``targets`` (next-token ids, ``-100`` ignored) return the loss of the LM head computed
        in token chunks (:func:`~value_routing.kernels.linear_cross_entropy`): the full
        ``(batch, seq, vocab)`` logits never exist, in forward or backward.

        ``attention_mask (batch, seq)``: 1 for real tokens, 0 for padding (left, right or both);
        padding keys are hidden from every query and rotary positions count real tokens only, so
        each row's real tokens get the logits they would get alone. Logits at padding positions
        are meaningless. With ``cache`` the tokens continue the cached sequence and the returned
        cache holds them (and their mask) too. ``seq_lens`` packs documents into a batch of one
        (block-diagonal causal attention, RoPE positions restarting per document).

        ``validate`` checks token ids and the mask eagerly (a ValueError naming the argument;
        one host sync); it is skipped inside ``torch.compile``. Decoding loops that feed back
        sampled ids may turn it off.
        """
        if validate and not torch.compiler.is_compiling():
            check_tokens(tokens, self.cfg.vocab_size)
            if attention_mask is not None:
                past = None if cache is None or cache.keep is None else cache.keep[:, : cache.length]
                check_attention_mask(attention_mask, tokens, past)
            if targets is not None:
                check_targets(targets, tokens, self.cfg.vocab_size)
        hidden, new_cache = self.hidden_states(tokens, attention_mask=attention_mask, cache=cache, seq_lens=seq_lens)
        if targets is not None:
            return linear_cross_entropy(hidden.flatten(0, 1), self.head_weight, targets.flatten())
        return LMOutput(hidden @ self.head_weight.t(), new_cache)

    @shapecheck
    def hidden_states(
        self,
        tokens: Int[Tensor, "batch seq"],
        *,
        attention_mask: Shaped[Tensor, "batch seq"] | None = None,
        cache: KVCache | None = None,
        seq_lens: Sequence[int] | None = None,
    ) -> tuple[Float[Tensor, "batch seq dim"], KVCache | None]:
        """The final-norm hidden states the LM head reads (see :meth:`forward`; no input checks)."""
        batch, seq = tokens.shape
        offset = 0 if cache is None else cache.length
        if cache is not None and offset + seq > cache.capacity:
            raise ValueError(f"cache overflow: {offset} cached + {seq} new tokens > capacity {cache.capacity}")
        if offset + seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {offset + seq} exceeds max_seq_len {self.cfg.max_seq_len}")
        keep = _key_keep(tokens, attention_mask, cache, seq_lens is not None)
        mask = AttentionMask(offset, None if seq_lens is None else tuple(int(n) for n in seq_lens), keep)
        mask.check(batch, seq, offset + seq)
        positions = mask.positions(seq, tokens.device)
        ctx = AttentionContext((self.rope_cos[positions], self.rope_sin[positions]), mask,
                               get_backend(self.cfg.attention_backend, tokens.device))
        inp, state = self.strategy.init_state(self.embed(tokens), tokens)
        # Checkpointing keeps only each block's inputs; block_output (the depth routing) stays outside it.
        recompute = self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else cache.layers[i]
            if recompute:
                y, state = checkpoint(block, inp, self.strategy, state, ctx, layer_cache, use_reentrant=False)
            else:
                y, state = block(inp, self.strategy, state, ctx, layer_cache)
            inp, state = self.strategy.block_output(i, y, state)
        x = self.norm(inp.x)
        new_cache = None if cache is None else KVCache(cache.layers, offset + seq, cache.keep, keep is not None)
        return x, new_cache


def _key_keep(
    tokens: Tensor, attention_mask: Tensor | None, cache: KVCache | None, packed: bool
) -> Tensor | None:
    """Which keys are real tokens ``(batch, kv_len)``, or ``None`` when nothing is padded.

    The new tokens' mask is recorded in the cache, so later steps (which pass no mask) still
    hide the padding of the prompt.
    """
    offset = 0 if cache is None else cache.length
    end = offset + tokens.shape[1]
    padded = attention_mask is not None or (cache is not None and cache.padded)
    if padded and packed:
        raise ValueError("attention_mask (padding) cannot be combined with seq_lens (packed documents)")
    if cache is not None and cache.keep is None:
        if padded:
            raise ValueError("attention_mask with a cache needs the cache's mask buffer: use KVCache.allocate")
        return None
    new = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask != 0
    if cache is not None:
        cache.keep[:, offset:end] = new  # always: a later padded step must see these as real
        return cache.keep[:, :end] if padded else None
    return new if padded else None
