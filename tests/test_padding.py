"""Padded batches: every row of a left/right-padded batch equals that prompt alone (logits, greedy
continuation, KV-cache decode, compile), the mask's backends agree, and bad inputs raise ValueErrors."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import naive_attention
from recipes.lm.generate import generate
from recipes.lm.model import KVCache
from forms import FORM_IDS, FORMS
from test_model import model_for, tiny, tokens
from value_routing.attention import AttentionMask, sdpa_attention, xformers_available, xformers_bias

LENS = (5, 2, 7)


def padded(prompts, side, width=None, pad=3):
    """``prompts`` padded on ``side`` with token ``pad``; the 0/1 mask; each row's real columns."""
    width = width or max(len(p) for p in prompts)
    batch = torch.full((len(prompts), width), pad)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    cols = []
    for row, p in enumerate(prompts):
        cols.append(slice(width - len(p), width) if side == "left" else slice(0, len(p)))
        batch[row, cols[-1]], mask[row, cols[-1]] = p, 1
    return batch, mask, cols


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_padded_batch_equals_each_prompt_alone(strategy, options, side):
    model = model_for(tiny(strategy, options))
    prompts = [tokens(1, n, seed=n)[0] for n in LENS]
    batch, mask, cols = padded(prompts, side)
    logits = model(batch, attention_mask=mask).logits
    out = generate(model, batch, 6, attention_mask=mask)
    for row, (p, col) in enumerate(zip(prompts, cols)):
        torch.testing.assert_close(logits[row, col], model(p[None]).logits[0], rtol=1e-10, atol=1e-10)
        assert torch.equal(out[row, batch.shape[1] :], generate(model, p[None], 6)[0, len(p) :])


@pytest.mark.parametrize("strategy", ["satformer", "mudd", "hyper", "value_embed"])
def test_padded_decode_with_cache_equals_full_padded_forward(strategy):
    """Prefill a left-padded batch, then decode token by token: logits equal one padded forward."""
    cfg = tiny(strategy)
    model = model_for(cfg)
    batch, mask, _ = padded([tokens(1, n, seed=n)[0] for n in LENS], "left", width=8)
    rest = tokens(3, 4, seed=9)
    full = model(torch.cat((batch, rest), 1), attention_mask=torch.cat((mask, torch.ones_like(rest)), 1)).logits
    cache = KVCache.allocate(cfg, 3, 12, dtype=torch.float64)
    logits, cache = model(batch, attention_mask=mask, cache=cache)
    steps = [logits]
    for t in range(4):
        logits, cache = model(rest[:, t : t + 1], cache=cache)
        steps.append(logits)
    real = torch.cat((mask, torch.ones_like(rest)), 1).bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real])
    assert cache.padded and cache.length == 12


def test_padding_between_cached_chunks_and_no_nan_at_padding():
    """Padding may also arrive mid-sequence (a later chunk); padding rows stay finite."""
    model = model_for(tiny("satformer"))
    x = tokens(2, 9)
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    mask[1, 4:6] = 0
    logits = model(x, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    for row in range(2):
        keep = mask[row].bool()
        torch.testing.assert_close(logits[row, keep], model(x[row, keep][None]).logits[0])


@pytest.mark.parametrize("strategy", ["satformer"])
def test_compile_fullgraph_with_padding_matches_eager(strategy):
    torch._dynamo.reset()
    model = model_for(tiny(strategy, n_layers=2), dtype=torch.float32).train()
    batch, mask, _ = padded([tokens(1, n, seed=n)[0] for n in LENS], "left")
    real = mask.bool()
    eager = model(batch, attention_mask=mask).logits
    eager[real].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = torch.compile(model, fullgraph=True)(batch, attention_mask=mask).logits
    out[real].sum().backward()
    torch.testing.assert_close(out[real], eager[real], atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
    torch._dynamo.reset()


def keep_mask(batch, kv_len, data):
    keep = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=kv_len, max_size=kv_len),
                                           min_size=batch, max_size=batch)))
    keep[:, -1] = True  # the newest key (the last query's own) is real
    return keep


@given(batch=st.integers(1, 3), q_len=st.integers(1, 6), offset=st.integers(0, 4), data=st.data())
def test_sdpa_key_padding_matches_naive_and_xformers_bias(batch, q_len, offset, data):
    kv_len = offset + q_len
    keep = keep_mask(batch, kv_len, data)
    mask = AttentionMask(offset, key_keep=keep)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, q_len, 4, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(batch, kv_len, 2, 8, generator=g, dtype=torch.float64) for _ in range(2))
    q_pos, k_pos = torch.arange(q_len)[:, None] + offset, torch.arange(kv_len)[None, :]
    allowed = ((k_pos <= q_pos) & keep[:, None, :]) | (k_pos == q_pos)  # real keys, and always itself
    torch.testing.assert_close(mask.dense(q_len, kv_len)[:, 0], allowed)
    out = sdpa_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, naive_attention(q, k, v, allowed[:, None]))
    bias = xformers_bias(mask, q_len, kv_len, torch.float32)
    assert bias.shape == (batch, 1, 1, q_len, kv_len) and bias.stride(-2) % 8 == 0
    torch.testing.assert_close(bias[:, 0, 0] == 0, allowed)


def test_positions_count_real_tokens_only():
    keep = torch.tensor([[False, False, True, True, True], [True, True, False, True, True]])
    assert AttentionMask(key_keep=keep).positions(5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 1, 2, 3]]
    assert AttentionMask(q_offset=3, key_keep=keep).positions(2).tolist() == [[1, 2], [2, 3]]


# ----------------------------------------------------------------------------- input errors
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.tensor([[300, 1]]), r"tokens must be ids in \[0, vocab_size\) = \[0, 61\), got 300"),
        (torch.tensor([[5, -1]]), r"tokens .*\[0, 61\), got -1"),
        (torch.tensor([[5.0, 1.0]]), r"tokens must have an integer dtype .*vocab_size=61.*float32"),
        (torch.tensor([[True]]), "tokens must have an integer dtype"),
        (torch.tensor([3, 4]), r"tokens must be a 2-D \(batch, seq\)"),
        ([[3, 4]], "tokens must be a torch.Tensor"),
    ],
)
def test_bad_tokens_raise_value_errors(bad, match):
    model = model_for(tiny())
    with pytest.raises(ValueError, match=match):
        model(bad)
    with pytest.raises(ValueError, match=match):
        generate(model, bad, 2)


@pytest.mark.parametrize(
    "mask, match",
    [
        (torch.ones(2, 3), r"attention_mask must have the shape of tokens \(batch, seq\) = \(2, 4\), got \(2, 3\)"),
        (torch.tensor([[1, 2, 1, 1], [1, 1, 1, 1]]), "attention_mask must hold only 0 and 1.*got 2"),
        (torch.tensor([[1, 0.5, 1, 1], [1, 1, 1, 1]]), "only 0 and 1.*got 0.5"),
        (torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), r"attention_mask rows \[1\] hold only padding"),
        ("1111", "attention_mask must be a torch.Tensor"),
    ],
)
def test_bad_attention_masks_raise_value_errors(mask, match):
    model = model_for(tiny())
    with pytest.raises(ValueError, match=match):
        model(tokens(2, 4), attention_mask=mask)
    with pytest.raises(ValueError, match=match):
        generate(model, tokens(2, 4), 2, attention_mask=mask)


def test_padding_cannot_combine_with_packing_or_a_bare_cache():
    model = model_for(tiny())
    with pytest.raises(ValueError, match="seq_lens"):
        model(tokens(1, 4), attention_mask=torch.ones(1, 4), seq_lens=[2, 2])
    bare = KVCache(KVCache.allocate(model.cfg, 1, 8, dtype=torch.float64).layers)
    with pytest.raises(ValueError, match="KVCache.allocate"):
        model(tokens(1, 4), attention_mask=torch.ones(1, 4), cache=bare)


def test_checks_run_outside_compiled_graphs():
    """Validation reads tensor values: it must not run (break the graph, sync) under torch.compile."""
    torch._dynamo.reset()
    model = model_for(tiny(n_layers=1), dtype=torch.float32)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    x, mask = tokens(2, 5), torch.ones(2, 5, dtype=torch.long)
    mask[0, :2] = 0
    torch.testing.assert_close(compiled(x, attention_mask=mask).logits, model(x, attention_mask=mask).logits)
    explain = torch._dynamo.explain(model)(x, attention_mask=mask)
    assert explain.graph_break_count == 0
    torch._dynamo.reset()


@pytest.mark.skipif(not xformers_available(), reason="xFormers kernels need CUDA")
@pytest.mark.parametrize("offset", [0, 3])
def test_xformers_key_padding_matches_sdpa_on_cuda(offset):
    from value_routing.attention import xformers_attention

    q_len, kv_len = 5, offset + 5
    keep = torch.ones(2, kv_len, dtype=torch.bool, device="cuda")
    keep[0, :2] = False
    mask = AttentionMask(offset, key_keep=keep)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, q_len, 4, 16, generator=g).cuda()
    k, v = (torch.randn(2, kv_len, 2, 16, generator=g).cuda() for _ in range(2))
    torch.testing.assert_close(xformers_attention(q, k, v, mask), sdpa_attention(q, k, v, mask), atol=2e-3, rtol=2e-3)
