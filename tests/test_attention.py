"""Attention backends: parity with a naive reference and with xFormers' mask semantics."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from reference import naive_attention
from value_routing.attention import AttentionMask, get_backend, sdpa_attention, xformers_available, xformers_bias


def qkv(batch, q_len, kv_len, heads, kv_heads, dim=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, q_len, heads, dim, generator=g, dtype=dtype),
            torch.randn(batch, kv_len, kv_heads, dim, generator=g, dtype=dtype),
            torch.randn(batch, kv_len, kv_heads, dim, generator=g, dtype=dtype))


@given(batch=st.integers(1, 3), q_len=st.integers(1, 9), offset=st.integers(0, 6),
       kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2, 3]))
def test_sdpa_matches_naive_causal_gqa_with_offset(batch, q_len, offset, kv_heads, group):
    q, k, v = qkv(batch, q_len, offset + q_len, kv_heads * group, kv_heads)
    mask = AttentionMask(q_offset=offset)
    expected = naive_attention(q, k, v, mask.dense(q_len, offset + q_len))
    torch.testing.assert_close(sdpa_attention(q, k, v, mask), expected)


@given(lens=st.lists(st.integers(1, 6), min_size=1, max_size=4), group=st.sampled_from([1, 2]))
def test_sdpa_packed_documents_equal_separate_documents(lens, group):
    total = sum(lens)
    q, k, v = qkv(1, total, total, 2 * group, 2)
    packed = sdpa_attention(q, k, v, AttentionMask(seq_lens=tuple(lens)))
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        alone = sdpa_attention(q[:, sl], k[:, sl], v[:, sl], AttentionMask())
        torch.testing.assert_close(packed[:, sl], alone)
        start += n


@given(lens=st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_document_mask_equals_xformers_block_diagonal_causal(lens):
    total = sum(lens)
    bias = xformers_bias(AttentionMask(seq_lens=tuple(lens))).materialize((total, total), dtype=torch.float32)
    torch.testing.assert_close(AttentionMask(seq_lens=tuple(lens)).dense(total, total), bias == 0)


@given(q_len=st.integers(1, 6), offset=st.integers(0, 6))
def test_causal_mask_equals_xformers_lower_triangular(q_len, offset):
    bias = xformers_bias(AttentionMask(q_offset=offset)).materialize((q_len, offset + q_len), dtype=torch.float32)
    torch.testing.assert_close(AttentionMask(q_offset=offset).dense(q_len, offset + q_len), bias == 0)


def test_positions_restart_per_document():
    assert AttentionMask(seq_lens=(3, 2)).positions(5).tolist() == [0, 1, 2, 0, 1]
    assert AttentionMask(q_offset=4).positions(2).tolist() == [4, 5]


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(q_offset=-1), "q_offset"), (dict(seq_lens=(2, 0)), "seq_lens"), (dict(seq_lens=(2,), q_offset=1), "seq_lens")],
)
def test_invalid_masks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionMask(**kwargs)


def test_mask_shape_mismatch_and_bad_gqa_raise():
    q, k, v = qkv(2, 4, 4, 4, 2)
    with pytest.raises(ValueError, match="batch == 1"):
        sdpa_attention(q, k, v, AttentionMask(seq_lens=(2, 2)))
    with pytest.raises(ValueError, match="kv_len"):
        sdpa_attention(q, k, v, AttentionMask(q_offset=1))
    q3, k3, v3 = qkv(1, 4, 4, 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        sdpa_attention(q3, k3, v3, AttentionMask())


def test_backend_selection():
    assert get_backend("sdpa") is sdpa_attention
    assert get_backend("auto", "cpu") is sdpa_attention
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        get_backend("flash")
    with pytest.raises(ValueError, match="xformers"):
        get_backend("xformers", "cpu")


@pytest.mark.skipif(not xformers_available(), reason="xFormers kernels need CUDA")
@pytest.mark.parametrize("mask", [AttentionMask(), AttentionMask(q_offset=3), AttentionMask(seq_lens=(5, 3))])
def test_xformers_matches_sdpa_on_cuda(mask):
    from value_routing.attention import xformers_attention

    batch = 1
    q_len = 8 if mask.seq_lens else 5
    q, k, v = (t.cuda().float() for t in qkv(batch, q_len, mask.q_offset + q_len, 4, 2, dim=16))
    torch.testing.assert_close(xformers_attention(q, k, v, mask), sdpa_attention(q, k, v, mask), atol=2e-3, rtol=2e-3)
