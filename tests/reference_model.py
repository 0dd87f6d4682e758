r"""An independent reference LM, written from the equations with plain loops.

It imports nothing from ``value_routing``, ``blocks`` or ``recipes``: parameters come in as a
``{name: tensor}`` dict (the names of ``CausalLM.named_parameters()``, so weights are copied by
name) and a :class:`Spec` of plain numbers. Everything is spelled out per layer and per head:

* pre-norm block ``a = x + Attn(norm(x_q), norm(x_k), norm(x_v))``, ``y = a + SwiGLU(norm(a))``
  with ``RMSNorm(x) = x / sqrt(mean(x²) + eps) · w`` (LayerNorm Scaling: every ``norm`` of block
  ``i`` times ``1/sqrt(i + 1)``; Peri-LN: each sublayer output normed again before the ``+``);
* projections ``q = W_q h (+ b_q)``, ``k = W_k h (+ b_k)``, ``v = W_v h (+ b_v)`` (biases with
  ``qkv_bias``), each head ``head_dim`` wide (``d_model / heads`` unless given);
* attention per query head ``h`` with kv-head ``h // (heads / kv_heads)`` (GQA),
  ``softmax(q kᵀ / sqrt(head_dim) + causal mask) v``, optional qk-norm (RMSNorm over
  ``head_dim``) before RoPE; RoPE rotates channel pairs ``(i, i + head_dim/2)`` by
  ``pos · theta^(-2i/head_dim)``;
* ``SwiGLU(x) = W2 (silu(W1 x) ⊙ W3 x)``; tied (or separate) LM head after a final RMSNorm;
* the value hook acts on the RoPE-free value projection before attention (what a KV cache
  stores); ``V1`` is layer 0's raw value projection.

A strategy is one small class: what it keeps from the embedding output and the token ids
(``start``), how the residual streams enter a block (``enter``), how it
rewrites a layer's values (``mix``), how each sublayer's output joins the stream (``residual``,
``x + out`` unless it routes per sublayer), how a block's output updates the streams
(``leave``) and what reaches the final norm (``final``); ``separate_qkv_norms`` gives the q, k,
v inputs their own learned norms. A new strategy is one more class in :data:`ROUTINGS`, a new
form of one a branch on its ``form`` option (as MUDDFormer and Hyper-Connections have).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Spec:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int | tuple[int, ...]  # one width, or one per layer
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = False
    qk_norm_eps: float | None = None  # None: norm_eps
    tie_embeddings: bool = True
    layernorm_scaling: bool = False  # pre-norm outputs of block i (0-based) × 1/sqrt(i + 1)
    peri_norm: bool = False  # a learned RMSNorm on each sublayer output before the residual
    head_dim: int | None = None  # None: d_model // n_heads
    qkv_bias: bool = False  # biases on the q, k, v projections (not the output projection)
    strategy: str = "baseline"
    options: dict[str, Any] = field(default_factory=dict)
    #: The model stores its RoPE cos/sin tables in float32 (computed in float64, then rounded);
    #: a float64 model casts the rounded tables. The reference rounds the same way so float64
    #: comparisons can be tight (the rounding is ~1e-8 relative in the logits).
    rope_table_dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)


# ----------------------------------------------------------------------------- elementary ops


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    out = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return out if weight is None else out * weight


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def rope(x: torch.Tensor, positions: torch.Tensor, spec: Spec) -> torch.Tensor:
    """Rotate ``x`` (batch, seq, heads, head_dim): pair ``(i, i + half)`` by ``pos·θ^(-2i/d)``."""
    d = x.shape[-1]
    half = d // 2
    freq = torch.tensor([spec.rope_theta ** (-2 * i / d) for i in range(half)], dtype=torch.float64)
    angle = positions.to(torch.float64)[:, None] * freq[None, :]
    cos = angle.cos().to(spec.rope_table_dtype).to(x.dtype)[None, :, None, :]
    sin = angle.sin().to(spec.rope_table_dtype).to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, one query head at a time; ``q`` (b, t, H, d), ``k``/``v`` (b, t, KV, d)."""
    b, t, n_heads, d = q.shape
    group = n_heads // k.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    out = []
    for head in range(n_heads):
        kv = head // group
        scores = q[:, :, head] @ k[:, :, kv].transpose(1, 2) / math.sqrt(d)
        scores = scores.masked_fill(~causal, float("-inf"))
        out.append(softmax(scores) @ v[:, :, kv])
    return torch.stack(out, dim=2)


def gate_activation(logits: torch.Tensor, act: str) -> torch.Tensor:
    """SATFormer's gate activations; the softmax forms normalise over kv-heads, × heads."""
    heads = logits.shape[-1]
    if act == "relu":
        return torch.where(logits > 0, logits, torch.zeros_like(logits))
    if act == "sigmoid":
        return 1 / (1 + torch.exp(-logits))
    if act == "tanh":
        return torch.tanh(logits)
    if act == "identity":
        return logits
    if act == "softmax":
        return heads * softmax(logits)
    if act == "softmax_sigmoid":
        return heads * softmax(logits) / (1 + torch.exp(-logits))
    raise ValueError(act)


# ----------------------------------------------------------------------------- one block


def block(
    p: Params, spec: Spec, i: int, x: torch.Tensor, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor,
    positions: torch.Tensor, routing: "Routing", v1: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``i`` on residual ``x`` with attention inputs ``xq, xk, xv``; returns ``(y, raw v)``."""
    pre = f"blocks.{i}."
    b, t, _ = x.shape
    H, KV, d = spec.n_heads, spec.n_kv_heads, spec.head_dim
    names = ("attn_norm", "attn_norm_k", "attn_norm_v") if routing.separate_qkv_norms else ("attn_norm",) * 3
    scale = 1 / math.sqrt(i + 1) if spec.layernorm_scaling else 1.0
    hq, hk, hv = (scale * rms_norm(z, p[pre + name + ".weight"], spec.norm_eps) for z, name in zip((xq, xk, xv), names))
    wqkv = p[pre + "attn.wqkv.weight"]
    wq, wk, wv = wqkv[: H * d], wqkv[H * d : (H + KV) * d], wqkv[(H + KV) * d :]
    q, k, v_raw = hq @ wq.T, hk @ wk.T, hv @ wv.T
    if spec.qkv_bias:
        bias = p[pre + "attn.wqkv.bias"]
        q, k, v_raw = q + bias[: H * d], k + bias[H * d : (H + KV) * d], v_raw + bias[(H + KV) * d :]
    q, k, v_raw = q.view(b, t, H, d), k.view(b, t, KV, d), v_raw.view(b, t, KV, d)
    v = routing.mix(i, v_raw, v1, hv)
    if spec.qk_norm:
        eps = spec.norm_eps if spec.qk_norm_eps is None else spec.qk_norm_eps
        q = rms_norm(q, p[pre + "attn.q_norm.weight"], eps)
        k = rms_norm(k, p[pre + "attn.k_norm.weight"], eps)
    q, k = rope(q, positions, spec), rope(k, positions, spec)
    attn = attention(q, k, v).reshape(b, t, H * d) @ p[pre + "attn.wo.weight"].T
    if spec.peri_norm:
        attn = rms_norm(attn, p[pre + "attn_out_norm.weight"], spec.norm_eps)
    a = routing.residual(i, 0, x, attn)
    h = scale * rms_norm(a, p[pre + "ffn_norm.weight"], spec.norm_eps)
    w13 = p[pre + "ffn.w13.weight"]
    d_ff = spec.d_ff if isinstance(spec.d_ff, int) else spec.d_ff[i]
    w1, w3 = w13[:d_ff], w13[d_ff:]
    mlp = (silu(h @ w1.T) * (h @ w3.T)) @ p[pre + "ffn.w2.weight"].T
    if spec.peri_norm:
        mlp = rms_norm(mlp, p[pre + "ffn_out_norm.weight"], spec.norm_eps)
    return routing.residual(i, 1, a, mlp), v_raw


def forward(p: Params, spec: Spec, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``(batch, seq, vocab)`` of the reference LM."""
    positions = torch.arange(tokens.shape[1])
    routing = ROUTINGS[spec.strategy](p, spec)
    x = p["embed.weight"][tokens]
    routing.start(x, tokens)
    v1 = None
    for i in range(spec.n_layers):
        x, xq, xk, xv = routing.enter(i)
        y, v_raw = block(p, spec, i, x, xq, xk, xv, positions, routing, v1)
        if i == 0:
            v1 = v_raw
        routing.leave(i, y)
    z = rms_norm(routing.final(), p["norm.weight"], spec.norm_eps)
    head = p["embed.weight"] if spec.tie_embeddings else p["lm_head.weight"]
    return z @ head.T


# ----------------------------------------------------------------------------- strategies


class Routing:
    """Baseline: one residual stream, values untouched, plain residual additions."""

    #: Whether the query, key and value inputs have their own learned norms.
    separate_qkv_norms = False

    def __init__(self, p: Params, spec: Spec) -> None:
        self.p, self.spec, self.opt = p, spec, spec.options

    def residual(self, i, sublayer, x, out):
        """How sublayer 0 (attention) or 1 (MLP) output ``out`` joins its input ``x``."""
        return x + out

    def start(self, x0, tokens):
        """Called once with the embedding output and the token ids."""
        self.x = x0

    def enter(self, i):
        return self.x, self.x, self.x, self.x

    def mix(self, i, v, v1, h):
        return v

    def leave(self, i, y):
        self.x = y

    def final(self):
        return self.x


class Static(Routing):
    """ResFormer: ``V'_n = λ1_n V1 + λ2_n V_n`` for ``n ≥ 1``."""

    def mix(self, i, v, v1, h):
        if i == 0:
            return v
        mode, p = self.opt.get("mode", "learnable"), self.p
        if mode == "fixed":
            lam1, lam2 = self.opt.get("lambda1", 0.5), self.opt.get("lambda2", 0.5)
        elif mode == "learnable":
            lam1, lam2 = p["strategy.lambda1"][i - 1], p["strategy.lambda2"][i - 1]
        else:  # λ1_n = s · softmax(ℓ)_n over layers 1..L-1
            lam1 = p["strategy.lambda_scale"] * softmax(p["strategy.lambda_logits"])[i - 1]
            lam2 = p["strategy.lambda2"][i - 1]
        return lam1 * v1 + lam2 * v


class SATFormer(Routing):
    """``V'_n = V_n + [s_n ⊙] act(W_α,n h_n [+ b_n]) ⊙ V1`` on layers ``1..L-1`` or the last ``k``."""

    def mix(self, i, v, v1, h):
        last_k = self.opt.get("last_k")
        first = 1 if last_k is None else self.spec.n_layers - last_k
        if i < first:
            return v
        logits = h @ self.p[f"strategy.gates.{i - first}.weight"].T
        if self.opt.get("bias_init") is not None:
            logits = logits + self.p[f"strategy.gates.{i - first}.bias"]
        alpha = gate_activation(logits, self.opt.get("act", "relu"))
        if self.opt.get("gate_scale") is not None:
            alpha = self.p[f"strategy.gate_scales.{i - first}"] * alpha
        return v + alpha[..., None] * v1


class DenseFormer(Routing):
    """``Y_i = Σ_{j ≤ i, j ≡ i (mod k)} α_ij X_j`` after every ``p``-th block, else ``Y_i = X_i``."""

    def start(self, x0, tokens):
        self.x, self.states = x0, [x0]

    def leave(self, i, y):
        depth, k, period = i + 1, self.opt.get("dilation", 1), self.opt.get("period", 1)
        self.states.append(y)
        if depth % period:
            self.x = y
            return
        alpha = self.p[f"strategy.alphas.{depth // period - 1}"]
        sources = [j for j in range(depth + 1) if j % k == depth % k]
        self.x = sum(alpha[n] * self.states[j] for n, j in enumerate(sources))


class MUDDFormer(Routing):
    """``X^c_i = Σ_j A^c_ij X_j``, ``A_i = GELU(RMSNorm(X_i) W1_i) W2_i + a_i``, streams Q, K, V, R.

    ``form="authors"``: ``X^c_i = g_post_ic ⊙ n(Σ_j A^c_ij g_pre_ij ⊙ n(X_j)) + X_i`` with
    ``n(x) = x / sqrt(mean(x²) + eps)``, and separate learned norms for the q, k, v inputs.
    """

    def __init__(self, p, spec):
        super().__init__(p, spec)
        self.authors = self.opt.get("form", "ours") == "authors"
        self.separate_qkv_norms = self.authors
        self.eps = self.opt.get("norm_eps", 1e-6)

    def start(self, x0, tokens):
        self.states = [rms_norm(x0, None, self.eps) if self.authors else x0]
        self.streams = (x0, x0, x0, x0)  # block 1 reads the embedding everywhere

    def enter(self, i):
        q, k, v, r = self.streams
        return r, q, k, v

    def leave(self, i, y):
        d, p = self.spec.d_model, self.p
        self.states.append(rms_norm(y, None, self.eps) if self.authors else y)
        n_streams = 1 if i == self.spec.n_layers - 1 else 4
        depth = i + 2
        hidden = gelu(rms_norm(y, None, self.eps) @ p[f"strategy.w1.{i}.weight"].T)
        a = hidden @ p[f"strategy.w2.{i}.weight"].T + p[f"strategy.static.{i}"]
        out = []
        for c in range(n_streams):  # weight of stream c on state j: a[..., c * depth + j]
            if not self.authors:
                out.append(sum(a[..., c * depth + j, None] * self.states[j] for j in range(depth)))
                continue
            g_pre = [p[f"strategy.pre_norms.{i}"][j * d : (j + 1) * d] for j in range(depth)]
            g_post = p[f"strategy.post_norms.{i}"][c * d : (c + 1) * d]
            summed = sum(a[..., c * depth + j, None] * g_pre[j] * self.states[j] for j in range(depth))
            out.append(g_post * rms_norm(summed, None, self.eps) + y)
        self.streams = tuple(out) if n_streams == 4 else (None, None, None, out[0])

    def final(self):
        return self.streams[3]


class HyperConnections(Routing):
    """``h = A_mᵀ H``, ``H ← Bᵀ T(h) + A_rᵀ H``; dynamic weights from RMSNorm(H).

    ``form="ours"``: one connection per block, ``T(h) = block(h) − h``. ``form="authors"``: one
    per sublayer (connection ``m = 2·layer + sublayer``), ``T`` the bare sublayer output, and a
    learned scale ``g`` in the dynamic norm (eps: the machine epsilon of the input's dtype unless given).
    """

    def __init__(self, p, spec):
        super().__init__(p, spec)
        self.n, self.authors = self.opt.get("rate", 4), self.opt.get("form", "ours") == "authors"

    def start(self, x0, tokens):
        # the authors' norm (nn.RMSNorm, no eps) takes the epsilon of its input's dtype
        default_eps = torch.finfo(x0.dtype).eps if self.authors else 1e-6
        self.eps = self.opt.get("norm_eps") if self.opt.get("norm_eps") is not None else default_eps
        self.H = [x0 for _ in range(self.n)]
        self.connect(0)

    def connect(self, m):
        """Connection ``m``'s weights from the current ``H``, and its sublayer input ``h``."""
        n, p = self.n, self.p
        static = p[f"strategy.static_alpha.{m}"].view(n, n + 1)  # row r: [A_m[r], A_r[r, 0..n-1]]
        am = [static[r, 0] for r in range(n)]
        ar = [[static[r, 1 + c] for c in range(n)] for r in range(n)]
        b = [p[f"strategy.static_beta.{m}"][r] for r in range(n)]
        if self.opt.get("dynamic", True):
            proj = p[f"strategy.proj.{m}"]  # rows 0..n: W_α's columns, row n + 1: W_β
            s_alpha, s_beta = p[f"strategy.scales.{m}"][0], p[f"strategy.scales.{m}"][1]
            g = p[f"strategy.norm_scale.{m}"] if self.authors else None
            for r in range(n):
                hbar = rms_norm(self.H[r], g, self.eps)
                am[r] = am[r] + s_alpha * torch.tanh(hbar @ proj[0])
                ar[r] = [ar[r][c] + s_alpha * torch.tanh(hbar @ proj[1 + c]) for c in range(n)]
                b[r] = b[r] + s_beta * torch.tanh(hbar @ proj[n + 1])
        self.ar, self.b = ar, b
        self.h = sum(_col(am[r]) * self.H[r] for r in range(n))
        return self.h

    def update(self, t):
        """``H_c ← B_c t + Σ_r A_r[r, c] H_r``."""
        n = self.n
        self.H = [_col(self.b[c]) * t + sum(_col(self.ar[r][c]) * self.H[r] for r in range(n)) for c in range(n)]

    def enter(self, i):
        return self.h, self.h, self.h, self.h

    def residual(self, i, sublayer, x, out):
        if not self.authors:
            return x + out
        self.update(out)
        m = 2 * i + sublayer + 1
        return self.connect(m) if m < 2 * self.spec.n_layers else None

    def leave(self, i, y):
        if self.authors:
            return
        self.update(y - self.h)
        if i + 1 < self.spec.n_layers:
            self.connect(i + 1)

    def final(self):
        return sum(self.H)


class Lerp(Routing):
    """x-transformers' learned value-residual mix: ``V'_n = μ V_n + (1 − μ) V1``,
    ``μ = σ(W_n h_n + b_n)`` per token and kv-head, on layers ``1..L-1``; with ``mix_scale``
    ``V'_n = V_n + s_n (1 − μ) (V1 − V_n)``, ``s_n`` per kv-head."""

    def mix(self, i, v, v1, h):
        if i == 0:
            return v
        w, b = self.p[f"strategy.gates.{i - 1}.weight"], self.p[f"strategy.gates.{i - 1}.bias"]
        out = torch.empty_like(v)
        for head in range(v.shape[2]):
            mu = 1 / (1 + torch.exp(-(h @ w[head] + b[head])))  # (batch, seq)
            if self.opt.get("mix_scale") is None:
                out[:, :, head] = mu[..., None] * v[:, :, head] + (1 - mu[..., None]) * v1[:, :, head]
            else:
                s = self.p[f"strategy.mix_scales.{i - 1}"][head]
                out[:, :, head] = v[:, :, head] + (s * (1 - mu[..., None])) * (v1[:, :, head] - v[:, :, head])
        return out


class Shortcut(Routing):
    """modded-nanogpt's x0 shortcut: block ``i`` reads ``λr_i x_i + λ0_i x0``; with ``gate``
    ``λ0_i(t) = λ0_i + w_i · n(x_i,t)``; ``x0_norm`` RMS-normalises the embedding first."""

    def start(self, x0, tokens):
        eps = self.opt.get("norm_eps", 1e-6)
        self.x0 = rms_norm(x0, None, eps) if self.opt.get("x0_norm", False) else x0
        self.x = self.x0

    def enter(self, i):
        p, eps = self.p, self.opt.get("norm_eps", 1e-6)
        lam0 = p["strategy.x0_lambdas"][i]
        if self.opt.get("gate", False):
            lam0 = lam0 + (rms_norm(self.x, None, eps) * p["strategy.gate_weight"][i]).sum(-1, keepdim=True)
        x = p["strategy.resid_lambdas"][i] * self.x + lam0 * self.x0
        return x, x, x, x


def _col(w: torch.Tensor) -> torch.Tensor:
    """A scalar or per-token ``(batch, seq)`` weight, broadcast over the feature axis."""
    return w if w.dim() == 0 else w[..., None]


class MHC(Routing):
    """mHC: ``x ← H_res x + H_postᵀ F(H_pre x)`` with ``H_pre = σ(·) (+ hc_eps)``, ``H_post = 2σ(·)``,
    ``H_res`` = Sinkhorn–Knopp of ``exp(·)`` (``sinkhorn_iters`` × column then row normalisation),
    the logits ``α · (vec(x) φ) / rms(vec(x)) + b`` from the flattened ``n·d`` stream.

    ``form="authors"`` (default): one connection per sublayer (``m = 2·layer + sublayer``), ``F``
    the bare sublayer; ``form="ours"``: one per block, ``F = block(h) − h``. Output: the sum of
    the streams. ``hc_eps`` (DeepSeek-V4's floor) is added to ``σ`` for pre, after the first
    column normalisation and to every normalisation's denominator.
    """

    def __init__(self, p, spec):
        super().__init__(p, spec)
        self.n, self.authors = self.opt.get("rate", 4), self.opt.get("form", "authors") == "authors"
        self.iters, self.floor = self.opt.get("sinkhorn_iters", 20), self.opt.get("hc_eps", 0.0)

    def start(self, x0, tokens):
        given = self.opt.get("norm_eps")
        self.eps = torch.finfo(x0.dtype).eps if given is None else given
        self.H = [x0 for _ in range(self.n)]
        self.connect(0)

    def connect(self, m):
        n, d, p = self.n, self.spec.d_model, self.p
        proj, bias, scales = p[f"strategy.proj.{m}"], p[f"strategy.bias.{m}"], p[f"strategy.scales.{m}"]
        rms = torch.sqrt(sum((h * h).sum(-1) for h in self.H) / (n * d) + self.eps)
        # row k of φᵀ: stream j's channels at columns j·d .. j·d + d - 1
        raw = [sum(self.H[j] @ proj[k, j * d : (j + 1) * d] for j in range(n)) / rms for k in range(n * (n + 2))]
        pre = [1 / (1 + torch.exp(-(scales[0] * raw[j] + bias[j]))) + self.floor for j in range(n)]
        self.post = [2 / (1 + torch.exp(-(scales[1] * raw[n + i] + bias[n + i]))) for i in range(n)]
        M = [[torch.exp(scales[2] * raw[2 * n + i * n + j] + bias[2 * n + i * n + j]) for j in range(n)]
             for i in range(n)]  # M[i][j]: output stream i, input stream j
        for t in range(self.iters):
            first = t == 0
            M = _normalise_columns(M, 0.0 if first else self.floor)
            if first:
                M = [[w + self.floor for w in row] for row in M]
            M = _normalise_rows(M, self.floor)
        self.res = M
        self.h = sum(_col(pre[j]) * self.H[j] for j in range(n))
        return self.h

    def update(self, t):
        """``H_i ← post_i t + Σ_j res[i][j] H_j``."""
        n = self.n
        self.H = [_col(self.post[i]) * t + sum(_col(self.res[i][j]) * self.H[j] for j in range(n)) for i in range(n)]

    def enter(self, i):
        return self.h, self.h, self.h, self.h

    def residual(self, i, sublayer, x, out):
        if not self.authors:
            return x + out
        self.update(out)
        m = 2 * i + sublayer + 1
        return self.connect(m) if m < 2 * self.spec.n_layers else None

    def leave(self, i, y):
        if self.authors:
            return
        self.update(y - self.h)
        if i + 1 < self.spec.n_layers:
            self.connect(i + 1)

    def final(self):
        return sum(self.H)


def _normalise_columns(M, floor):
    n = len(M)
    sums = [sum(M[i][j] for i in range(n)) + floor for j in range(n)]
    return [[M[i][j] / sums[j] for j in range(n)] for i in range(n)]


def _normalise_rows(M, floor):
    return [[w / (sum(row) + floor) for w in row] for row in M]


class AttnRes(Routing):
    """``h_m = Σ_i softmax_i(w_m · RMSNorm_m(v_i)) v_i`` before sublayer ``m = 1..2L-1`` and the final norm
    (``m = 2L``); sources: the embedding, then the outputs ``o_0..o_{m-1}`` summed in consecutive
    groups of ``block_size`` (the last group may be partial; ``block_size=1``: every output)."""

    def start(self, x0, tokens):
        self.x, self.outputs = x0, [x0]  # outputs[0]: the embedding, then o_0, o_1, ...

    def residual(self, i, sublayer, x, out):
        self.outputs.append(out)
        m, size, p = 2 * i + sublayer + 1, self.opt.get("block_size", 1), self.p
        sources = [self.outputs[0]]
        for first in range(0, m, size):
            sources.append(sum(self.outputs[1 + j] for j in range(first, min(first + size, m))))
        w, g = p[f"strategy.queries.{m - 1}"], p[f"strategy.key_scales.{m - 1}"]
        eps = self.opt.get("norm_eps", 1e-6)
        logits = torch.stack([(rms_norm(v, g, eps) * w).sum(-1) for v in sources], dim=-1)
        alpha = softmax(logits)
        scale = len(sources) if self.opt.get("scale_by_sources", False) else 1
        return scale * sum(alpha[..., n, None] * v for n, v in enumerate(sources))

    def leave(self, i, y):
        self.x = y


class ValueEmbed(Routing):
    """modded-nanogpt's value embeddings: ``V'_i = V_i + g_i ⊙ E_τ(i)[t]`` on the chosen layers,
    ``g_i = 2σ(W_i [h_i[:k]; e[:k]])`` per kv-head (``gate=False``: ``g = 1``)."""

    def start(self, x0, tokens):
        self.x, self.tokens = x0, tokens
        L, layers, tables = self.spec.n_layers, self.opt.get("layers", "speedrun"), self.opt.get("tables")
        if layers == "speedrun":  # 1, 2 and the last three, one table each
            chosen = [i for i in range(L) if i in (1, 2, L - 3, L - 2, L - 1)]
            pairs = [(i, n) for n, i in enumerate(chosen)]
        elif layers == "shared":  # k tables, table j on layer j and on layer L - k + j
            k = max(1, min(3, L // 2))
            pairs = [(j, j) for j in range(k)] + [(L - k + j, j) for j in range(k)]
        elif layers == "every":
            pairs = [(i, i) for i in range(L)]
        else:
            tables = list(range(len(layers))) if tables is None else tables
            pairs = [(i if i >= 0 else L + i, n) for i, n in zip(layers, tables)]
        self.table = {i: n for i, n in pairs}
        self.gate_index = {i: n for n, i in enumerate(sorted(self.table))}

    def mix(self, i, v, v1, h):
        if i not in self.table:
            return v
        b, t, kv, d = v.shape
        e = self.p[f"strategy.tables.{self.table[i]}"][self.tokens]  # (b, t, kv·d)
        k = self.opt.get("gate_width") or min(6, self.spec.d_model, kv * d)
        out = torch.empty_like(v)
        for head in range(kv):
            g = torch.ones(b, t, dtype=v.dtype)
            if self.opt.get("gate", True):
                w = self.p[f"strategy.gates.{self.gate_index[i]}"][head]
                logit = (h[..., :k] * w[:k]).sum(-1) + (e[..., :k] * w[k:]).sum(-1)
                g = 2 / (1 + torch.exp(-logit))
            out[:, :, head] = v[:, :, head] + g[..., None] * e[..., head * d : (head + 1) * d]
        return out


ROUTINGS: dict[str, type[Routing]] = {
    "baseline": Routing,
    "static": Static,
    "satformer": SATFormer,
    "dense": DenseFormer,
    "mudd": MUDDFormer,
    "hyper": HyperConnections,
    "attnres": AttnRes,
    "lerp": Lerp,
    "shortcut": Shortcut,
    "value_embed": ValueEmbed,
    "mhc": MHC,
}
