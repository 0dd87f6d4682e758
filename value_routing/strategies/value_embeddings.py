r"""ValueEmbeddings: per-layer token-embedding tables added into the values (modded-nanogpt).

Every layer :math:`\ell` of a chosen set :math:`S` (the others run as the baseline) adds a
learned embedding of the current token :math:`t` to its raw value projection:

.. math::

    V'_\ell = V_\ell + g_\ell \odot E_{\tau(\ell)}[t], \qquad
    g_\ell = 2\,\sigma\big(W_\ell\, [\,h_\ell[{:}k]\,;\ e_\ell[{:}k]\,]\big), \qquad
    e_\ell = E_{\tau(\ell)}[t]

where :math:`E_\tau \in \mathbb{R}^{V \times H_\text{kv} d_h}` is table :math:`\tau(\ell)`
(several layers may read one table), its row viewed as ``(kv_heads, head_dim)``;
:math:`h_\ell` is the normed block input; :math:`[\,\cdot\,;\,\cdot\,]` concatenates the first
:math:`k` channels (``gate_width``) of :math:`h_\ell` and of the flat row :math:`e_\ell`; and
:math:`W_\ell \in \mathbb{R}^{H_\text{kv} \times 2k}` starts at zero, so :math:`g_\ell = 1` at init.
:math:`g_\ell` has shape ``batch seq kv_heads`` and broadcasts over ``head_dim``. ``gate=False``
is the plain form :math:`V'_\ell = V_\ell + E_{\tau(\ell)}[t]`. Tables start at
:math:`\mathcal{N}(0, \text{init\_std}^2)` (0.01); ``init_std=0`` starts them at zero (the baseline):
the function-preserving start (:meth:`~value_routing.strategies.base.Strategy.preserving_options`),
where the tables learn from the first step and :math:`W_\ell` from the second (its gradient is
:math:`\propto e_\ell`).

Which layers get a table and which table each reads (``layers``, ``tables``): a named pattern
scaled to the depth :math:`L`, or explicit layer indices (negative ones count from the end) with,
optionally, the table of each (equal numbers share one table; default: one table each).

* ``"speedrun"`` (default): layers :math:`\{1, 2, L-3, L-2, L-1\} \cap [0, L)`, one table each
  (11 layers: 1, 2, 8, 9, 10);
* ``"shared"``: :math:`k = \max(1, \min(3, \lfloor L/2 \rfloor))` tables, table :math:`j` on
  layers :math:`j` and :math:`L-k+j` (12 layers: tables 0, 1, 2 on layers 0, 1, 2 and 9, 10, 11);
* ``"every"``: every layer its own table.

This follows KellerJordan/modded-nanogpt's ``train_gpt.py``. Its current form (since the
2026-02-15 record "Tuned Value Embeddings") is ``"speedrun"`` with the gate: five tables of width
``model_dim`` initialised N(0, 0.01²) on layers 1, 2 and the last three, each layer a zero-init
gate of shape ``(num_heads, 12)`` fed the first 6 channels of the normed attention input and of
the value embedding, :math:`2\sigma(\cdot)` per head, added to the raw values before attention
(since 2026-05-24 its last layer's gate comes from its MUDD connections instead).
``"shared"`` is its "012 ... 012" pattern (2024-12-31 to 2025-09-21: three tables on the first
and the last three layers; until 2026-01-28 it then ran ".12 ... 012", layer 0 without its table),
``"every"`` the first record's (2024-12-05, one table per layer).
The plain form is what it ran 2025-12-14 to 2025-12-29 (``v + ve``); before that it mixed
``λ0·v + λ1·ve`` with learned scalars (not implemented here). Its gate is per
query head and its values have ``num_heads`` heads (no GQA); ours is per key/value head, the same
when ``n_kv_heads == n_heads``.

The strategy's state is the token ids (``init_state(x0, tokens)``); every operation is per token,
so decoding with a KV cache needs only the new tokens. The tables (``vocab × kv_heads·head_dim``
each) are 2-D parameters, so the recipes' ``decay="matrices"`` decays them like the token
embedding (modded-nanogpt decays them too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from value_routing.strategies.base import STRATEGIES, BlockInput, ModelDims, Strategy, check_layer, fix_options
from value_routing.strategies.checks import check_number
from value_routing.typing import Float, Int, Tensor, shapecheck

#: The named layer patterns of ``layers``.
PATTERNS: tuple[str, ...] = ("speedrun", "shared", "every")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pattern(name: str, n_layers: int) -> list[tuple[int, int]]:
    """``(layer, table)`` pairs of pattern ``name`` at depth ``n_layers``."""
    L = n_layers
    if name == "speedrun":
        chosen = sorted({1, 2, L - 3, L - 2, L - 1} & set(range(L)))
        return [(layer, j) for j, layer in enumerate(chosen)]
    if name == "shared":
        k = max(1, min(3, L // 2))
        return sorted({(layer, j) for j in range(k) for layer in (j, L - k + j)})
    return [(layer, layer) for layer in range(L)]


def table_layout(
    n_layers: int, layers: str | Sequence[int] = "speedrun", tables: Sequence[int] | None = None
) -> tuple[int | None, ...]:
    """The table each of the ``n_layers`` layers reads (``None``: no value embedding), validated.

    ``layers`` is a name of :data:`PATTERNS` or distinct layer indices in ``[-n_layers, n_layers)``;
    ``tables`` (only with explicit layers) the table index of each, using every index from 0 up.
    """
    if isinstance(layers, str):
        if layers not in PATTERNS:
            raise ValueError(f"layers must be one of {PATTERNS} or a sequence of layer indices, got {layers!r}")
        if tables is not None:
            raise ValueError(f"tables must be None with a named layers pattern ({layers!r}), got {tables!r}")
        pairs = _pattern(layers, n_layers)
    else:
        if not isinstance(layers, Sequence) or not layers or not all(_is_int(i) for i in layers):
            raise ValueError(f"layers must be one of {PATTERNS} or a non-empty sequence of integers, got {layers!r}")
        if not all(-n_layers <= i < n_layers for i in layers):
            raise ValueError(f"layers must be in [-{n_layers}, {n_layers}) (negative: from the end), got {layers!r}")
        index = [i % n_layers for i in layers]
        if len(set(index)) != len(index):
            raise ValueError(f"layers must name each layer once, got {layers!r} (layers {index} of {n_layers})")
        if tables is None:
            tables = range(len(index))
        elif (isinstance(tables, str) or not isinstance(tables, Sequence) or len(tables) != len(index)
              or not all(_is_int(t) for t in tables)):
            raise ValueError(f"tables must be None or one integer per entry of layers ({len(index)}), got {tables!r}")
        elif set(tables) != set(range(len(set(tables)))):
            raise ValueError(f"tables must number the tables 0, 1, 2, ... (each used, none skipped), got {tables!r}")
        pairs = list(zip(index, tables))
    out: list[int | None] = [None] * n_layers
    for layer, table in pairs:
        out[layer] = table
    return tuple(out)


@STRATEGIES.register("value_embed")
class ValueEmbeddings(Strategy):
    """modded-nanogpt's value embeddings (see module docstring for the equation and patterns)."""

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, n_kv_heads: int, vocab_size: int | None,
        gate: bool = True, layers: str | Sequence[int] = "speedrun", tables: Sequence[int] | None = None,
        gate_width: int | None = None, init_std: float = 0.01, head_dim: int | None = None,
    ) -> None:
        super().__init__(n_layers)
        if not _is_int(vocab_size) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1 (value_embed has one row per token: "
                             f"ModelDims(vocab_size=...)), got {vocab_size!r}")
        if n_heads < 1 or n_kv_heads < 1 or n_heads % n_kv_heads or (head_dim is None and d_model % n_heads):
            raise ValueError(f"d_model ({d_model}), n_heads ({n_heads}) and n_kv_heads ({n_kv_heads}) must be "
                             "positive, n_heads divisible by n_kv_heads and (without head_dim) d_model by n_heads")
        if not isinstance(gate, bool):
            raise ValueError(f"gate must be True or False, got {gate!r}")
        check_number("init_std", init_std, 0)
        if head_dim is not None and not (_is_int(head_dim) and head_dim >= 1):
            raise ValueError(f"head_dim must be None (d_model // n_heads) or an integer >= 1, got {head_dim!r}")
        self.head_dim = d_model // n_heads if head_dim is None else head_dim
        kv_dim = n_kv_heads * self.head_dim
        widest = min(d_model, kv_dim)
        if gate_width is not None and not (_is_int(gate_width) and 1 <= gate_width <= widest):
            raise ValueError(f"gate_width must be None or an integer in [1, min(d_model, kv_heads * head_dim)] = "
                             f"[1, {widest}], got {gate_width!r}")
        self.table_of = table_layout(n_layers, layers, tables)
        embedded = [layer for layer, t in enumerate(self.table_of) if t is not None]
        #: per layer, its gate's index among the embedded layers (None: no value embedding)
        self.gate_of = tuple(embedded.index(layer) if layer in embedded else None for layer in range(n_layers))
        self.d_model, self.n_kv_heads, self.vocab_size, self.gate = d_model, n_kv_heads, vocab_size, gate
        self.gate_width = min(6, widest) if gate_width is None else gate_width
        self.init_std = float(init_std)
        n_tables = 1 + max(t for t in self.table_of if t is not None)
        self.tables = nn.ParameterList(nn.Parameter(torch.randn(vocab_size, kv_dim) * self.init_std)
                                       for _ in range(n_tables))
        if gate:  # W_ℓ = 0: g = 2σ(0) = 1 at init
            self.gates = nn.ParameterList(nn.Parameter(torch.zeros(n_kv_heads, 2 * self.gate_width))
                                          for _ in embedded)

    @classmethod
    def for_model(cls, dims: ModelDims, **options) -> "ValueEmbeddings":
        return cls(d_model=dims.d_model, n_layers=dims.n_layers, n_heads=dims.n_heads, n_kv_heads=dims.n_kv_heads,
                   vocab_size=dims.vocab_size, head_dim=dims.head_dim, **options)

    @classmethod
    def preserving_options(cls, options):
        # zero tables add nothing; they learn on the first step (the gate, 2σ(0) = 1, passes their
        # gradient), the gate's W from the second (its gradient is ∝ E[t])
        return fix_options("value_embed", options, {"init_std": 0.0})

    @shapecheck
    def embedding(self, layer: int, tokens: Int[Tensor, "batch seq"]) -> Float[Tensor, "batch seq kv_heads head_dim"]:
        """``E_τ(layer)[t]`` for every token id of ``tokens``, as ``(kv_heads, head_dim)``."""
        check_layer(layer, self.n_layers)
        if self.table_of[layer] is None:
            raise ValueError(f"layer {layer} has no value embedding (layers with one: {self.embedded_layers})")
        table = self.tables[self.table_of[layer]]
        return F.embedding(tokens, table).unflatten(-1, (self.n_kv_heads, self.head_dim))

    @shapecheck
    def gate_values(
        self, layer: int, h: Float[Tensor, "batch seq dim"], e: Float[Tensor, "batch seq kv_heads head_dim"]
    ) -> Float[Tensor, "batch seq kv_heads"]:
        """``g = 2σ(W [h[:k]; e[:k]])`` of ``layer`` (``gate=True``) from its normed input and value embedding."""
        check_layer(layer, self.n_layers)
        if not self.gate or self.gate_of[layer] is None:
            raise ValueError(f"layer {layer} has no gate (gate={self.gate}, layers with one: {self.embedded_layers})")
        k = self.gate_width
        inp = torch.cat((h[..., :k], e.flatten(-2)[..., :k].to(h.dtype)), dim=-1)
        return 2 * torch.sigmoid(inp @ self.gates[self.gate_of[layer]].to(h.dtype).t())

    @property
    def embedded_layers(self) -> tuple[int, ...]:
        """The layers that add a value embedding, in order."""
        return tuple(layer for layer, t in enumerate(self.table_of) if t is not None)

    def init_state(
        self, x0: Float[Tensor, "batch seq dim"], tokens: Int[Tensor, "batch seq"] | None = None
    ) -> tuple[BlockInput, Int[Tensor, "batch seq"]]:
        if tokens is None:
            raise ValueError("value_embed looks its tables up by token id: init_state needs tokens (batch, seq), "
                             "got None")
        if tokens.shape != x0.shape[:2]:
            raise ValueError(f"tokens {tuple(tokens.shape)} must match x0's (batch, seq) {tuple(x0.shape[:2])}")
        return BlockInput(x0), tokens

    def mix_value(self, layer, v, h, state, logits=None):
        check_layer(layer, self.n_layers)
        if state is None:
            raise ValueError(f"mix_value of layer {layer} needs the token ids as its state (from init_state), got None")
        if self.table_of[layer] is None:
            return v, state
        e = self.embedding(layer, state).to(v.dtype)
        if self.gate:
            e = self.gate_values(layer, h, e).unsqueeze(-1) * e
        return v + e, state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_layers={self.n_layers}, n_kv_heads={self.n_kv_heads}, "
                f"vocab_size={self.vocab_size}, gate={self.gate}, table_of={self.table_of}, "
                f"gate_width={self.gate_width}, init_std={self.init_std}")
