"""Memory-lean training: the chunked LM head + cross-entropy equals the plain one (loss and every
gradient) without ever holding the logits, and per-block activation checkpointing changes no gradient."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from forms import FORM_IDS, FORMS
from test_model import model_for, tiny, tokens
from value_routing.kernels import linear_cross_entropy, linear_cross_entropy_reference


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def loss_and_grads(fn, h, w, y):
    h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
    loss = fn(h, w, y)
    (3.0 * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad, w.grad


@given(n=st.integers(1, 40), vocab=st.integers(2, 50), chunk=st.integers(1, 45), ignored=st.integers(0, 5))
def test_chunked_equals_plain_loss_and_gradients_float64(n, vocab, chunk, ignored):
    g = torch.Generator().manual_seed(n * 100 + vocab)
    h = torch.randn(n, 8, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, vocab, (n,), generator=g)
    y[torch.randperm(n, generator=g)[: min(ignored, n - 1)]] = -100  # at least one real target
    got = loss_and_grads(lambda a, b, c: linear_cross_entropy(a, b, c, chunk_size=chunk), h, w, y)
    want = loss_and_grads(linear_cross_entropy_reference, h, w, y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_chunked_float32_within_tolerance_and_no_grad_path():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(300, 64, generator=g), torch.randn(1000, 64, generator=g) * 0.1
    y = torch.randint(0, 1000, (300,), generator=g)
    got = loss_and_grads(lambda a, b, c: linear_cross_entropy(a, b, c, chunk_size=64), h, w, y)
    want = loss_and_grads(linear_cross_entropy_reference, h, w, y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, y, chunk_size=7), want[0], rtol=1e-5, atol=1e-6)


def test_chunked_never_materialises_the_logits():
    n, vocab = 256, 512
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(n, 16, generator=g), torch.randn(vocab, 16, generator=g)
    y = torch.randint(0, vocab, (n,), generator=g)
    for fn, holds in ((lambda a, b, c: linear_cross_entropy(a, b, c, chunk_size=32), False),
                      (linear_cross_entropy_reference, True)):
        with LargestTensor() as mode:
            loss_and_grads(fn, h, w, y)
        assert (mode.largest >= n * vocab) is holds, mode.largest  # chunked: at most 32 × vocab


@pytest.mark.parametrize("tie", [True, False])
def test_model_targets_equal_plain_cross_entropy_every_gradient(tie):
    model = model_for(tiny("satformer", tie_embeddings=tie)).train()
    x, y = tokens(2, 9), tokens(2, 9, seed=1)
    y[0, :3] = -100
    model(x, targets=y).backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss = model(x, targets=y).detach()
    model.zero_grad()
    plain = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    plain.backward()
    torch.testing.assert_close(loss, plain.detach(), rtol=1e-12, atol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(chunked[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)
    with pytest.raises(ValueError, match=r"targets must be ids in \[0, vocab_size\) = \[0, 61\) or -100"):
        model(x, targets=torch.full_like(x, 61))
    with pytest.raises(ValueError, match="targets must have the shape of tokens"):
        model(x, targets=y[:, 1:])


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_activation_checkpointing_changes_no_gradient(strategy, options):
    plain = model_for(tiny(strategy, options)).train()
    ckpt = model_for(dataclasses.replace(plain.cfg, activation_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    x, y = tokens(2, 10), tokens(2, 10, seed=1)
    calls = []
    for block in ckpt.blocks:  # (the block's own hook misses recomputation: it stops early, after the FFN)
        block.ffn_norm.register_forward_hook(lambda *_: calls.append(1))
    results = []
    for model in (plain, ckpt):
        loss = model(x, targets=y) + model(x).logits.square().mean()  # both heads through the blocks
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert len(calls) == 4 * ckpt.cfg.n_layers  # two forwards, each block recomputed once in backward
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for n, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], grad, rtol=1e-12, atol=1e-14, msg=n)


def test_compiled_chunked_loss_with_checkpointing_matches_eager():
    torch._dynamo.reset()
    model = model_for(tiny("dense", n_layers=2, activation_checkpointing=True), dtype=torch.float32).train()
    x, y = tokens(2, 8), tokens(2, 8, seed=1)
    model(x, targets=y).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.compile(lambda a, b: model(a, targets=b), fullgraph=True, backend="aot_eager")(x, y).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[n], rtol=1e-4, atol=1e-6, msg=n)
    torch._dynamo.reset()


def test_pretrain_with_chunked_loss_and_checkpointing_trains_like_plain():
    from recipes.train import pretrain

    args = ["--config", "tiny", "--strategy", "mudd", "--set", "d_model=32", "n_layers=2", "n_heads=2",
            "--seq-len", "16", "--micro-batch", "4", "--steps", "4", "--warmup", "1", "--log-every", "100"]
    plain = pretrain.main([*args, "--no-chunked-ce", "--no-activation-checkpointing"])
    lean = pretrain.main([*args, "--chunked-ce", "--activation-checkpointing"])
    torch.testing.assert_close(torch.tensor(lean), torch.tensor(plain), rtol=1e-5, atol=0)
    assert plain[-1] < plain[0]
