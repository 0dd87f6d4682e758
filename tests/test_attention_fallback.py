"""``attention_backend="auto"`` falls back to SDPA once, with a warning, when xFormers fails.

There is no GPU here, so the tests simulate one: the device check and xFormers' availability are
patched, and ``xformers_attention`` is replaced by a function that raises (as xFormers does for an
unsupported shape, dtype or GPU) or by a working stand-in that counts its calls.
"""

import warnings
from dataclasses import replace

import pytest
import torch

from recipes.lm.builders import satformer
from recipes.lm.model import CausalLM
from value_routing.attention import AttentionMask, backends, get_backend, sdpa_attention

UNSUPPORTED = "No operator found for `memory_efficient_attention_forward` with inputs (simulated)"


def _unsupported(q, k, v, mask):
    raise NotImplementedError(UNSUPPORTED)


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend every device is CUDA with xFormers importable; a fresh process-wide auto state."""
    monkeypatch.setattr(backends, "_on_cuda", lambda device: True)
    monkeypatch.setattr(backends, "xformers_unavailable_reason", lambda: None)
    monkeypatch.setattr(backends, "AUTO_ATTENTION", backends.AutoAttention())
    return monkeypatch


def _models(backend: str) -> tuple[CausalLM, CausalLM]:
    """Two models with the same weights: one on ``backend``, one on plain SDPA."""
    cfg = satformer("tiny", n_layers=2, max_seq_len=32)
    torch.manual_seed(0)
    model = CausalLM(replace(cfg, attention_backend=backend))
    reference = CausalLM(replace(cfg, attention_backend="sdpa"))
    reference.load_state_dict(model.state_dict())
    return model, reference


def _tokens(seq: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (2, seq), generator=torch.Generator().manual_seed(0))


def test_auto_falls_back_to_sdpa_once_with_a_warning_naming_the_reason(fake_cuda):
    fake_cuda.setattr(backends, "xformers_attention", _unsupported)
    model, reference = _models("auto")
    x = _tokens()
    with pytest.warns(RuntimeWarning, match="xFormers failed.*NotImplementedError.*simulated") as record:
        out = model(x).logits
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    torch.testing.assert_close(out, reference(x).logits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: SDPA is used from now on
        torch.testing.assert_close(model(x).logits, reference(x).logits)
        assert get_backend("auto", "cuda") is sdpa_attention


def test_explicit_xformers_still_raises(fake_cuda):
    fake_cuda.setattr(backends, "xformers_attention", _unsupported)
    model, _ = _models("xformers")
    with pytest.raises(NotImplementedError, match="simulated"):
        model(_tokens())
    assert backends.AUTO_ATTENTION.failure is None


def test_auto_uses_working_xformers_without_warning(fake_cuda):
    calls = []

    def working(q, k, v, mask):
        calls.append(q.shape)
        return sdpa_attention(q, k, v, mask)

    fake_cuda.setattr(backends, "xformers_attention", working)
    model, reference = _models("auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(_tokens()).logits, reference(_tokens()).logits)
    assert len(calls) == model.cfg.n_layers


def test_import_failure_warns_for_auto_and_raises_for_explicit(monkeypatch):
    reason = "cannot import xformers.ops: ImportError: libcudart.so.12: cannot open shared object file"
    monkeypatch.setattr(backends, "_on_cuda", lambda device: True)
    monkeypatch.setattr(backends, "xformers_unavailable_reason", lambda: reason)
    monkeypatch.setattr(backends, "AUTO_ATTENTION", backends.AutoAttention())
    with pytest.warns(RuntimeWarning, match="libcudart"):
        assert get_backend("auto", "cuda") is sdpa_attention
    with pytest.raises(ValueError, match="'xformers' cannot run.*libcudart"):
        get_backend("xformers", "cuda")


def test_input_errors_are_not_swallowed_by_the_fallback(fake_cuda):
    fake_cuda.setattr(backends, "xformers_attention", sdpa_attention)
    q, k, v = torch.randn(1, 4, 3, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="divisible"):
        get_backend("auto", "cuda")(q, k, v, AttentionMask())
    assert backends.AUTO_ATTENTION.failure is None
