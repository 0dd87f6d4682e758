"""Sampling rules of generation: temperature scales the logits, top-k never leaves the k best,
top_k = 1 is greedy. (Greedy == argmax of the full forward is pinned in test_model.py, padded
prompts continuing as alone in test_padding.py.)"""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recipes.lm.generate import generate, sample
from test_model import model_for, tiny, tokens

ROWS = 20_000


def _frequencies(draws: torch.Tensor, vocab: int) -> list[float]:
    return (torch.bincount(draws, minlength=vocab).double() / len(draws)).tolist()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits(temperature):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(ROWS, 4)
    weights = [math.exp(v / temperature) for v in (2.0, 1.0, 0.0, -1.0)]
    want = [w / sum(weights) for w in weights]  # T = 0.5: 0.867, 0.117, 0.016, 0.002
    got = _frequencies(sample(logits, temperature, None, torch.Generator().manual_seed(0)), 4)
    assert got == pytest.approx(want, abs=0.012)  # > 3 standard deviations of 20 000 draws


def test_a_tiny_temperature_is_greedy():
    logits = torch.randn(500, 30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample(logits, 1e-4, None, torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_top_k_never_samples_outside_the_k_largest():
    logits = torch.randn(ROWS // 10, 50, generator=torch.Generator().manual_seed(2))
    draws = sample(logits, 5.0, 3, torch.Generator().manual_seed(0))  # hot: outside the top 3 is likely
    top = logits.topk(3, dim=-1).indices
    assert (draws[:, None] == top).any(-1).all()
    assert draws.unique().numel() > 3  # not always the same few tokens
    hits = (draws[:, None] == top).float().mean(0)
    assert (hits > 0.2).all()  # at T = 5 each of the three is drawn often, not only the best


def test_top_1_is_greedy_and_top_vocab_is_no_limit():
    logits = torch.randn(2000, 40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(logits, 3.0, 1, torch.Generator().manual_seed(0)), logits.argmax(-1))
    unlimited = sample(logits, 3.0, None, torch.Generator().manual_seed(4))
    assert torch.equal(sample(logits, 3.0, 40, torch.Generator().manual_seed(4)), unlimited)
    assert torch.equal(sample(logits, 3.0, 1000, torch.Generator().manual_seed(4)), unlimited)


def test_generate_with_top_1_continues_like_greedy():
    model = model_for(tiny("satformer"))
    prompt = tokens(3, 4)
    greedy = generate(model, prompt, 8)
    assert torch.equal(generate(model, prompt, 8, temperature=2.0, top_k=1, generator=torch.Generator()), greedy)


@settings(max_examples=25, deadline=None)
@given(arg=st.sampled_from(["max_new_tokens", "temperature", "top_k"]),
       value=st.one_of(st.integers(-5, -1), st.just(0.0), st.just(1.5), st.just(math.nan), st.just(math.inf),
                       st.just(-math.inf), st.just(True), st.just("2")))
def test_generate_refuses_a_bad_argument_by_name(arg, value):
    allowed = {"max_new_tokens": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
               "temperature": lambda v: not isinstance(v, (bool, str)) and 0 <= v < math.inf,
               "top_k": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1}
    if allowed[arg](value):
        return  # a legal value: covered by the sampling tests above
    model = _tiny_model()
    kwargs = {"max_new_tokens": 2, arg: value}
    with pytest.raises(ValueError, match=arg):
        generate(model, tokens(1, 3), **kwargs)


def test_generate_refuses_an_empty_prompt():
    with pytest.raises(ValueError, match=r"^prompt must hold at least one token"):
        generate(_tiny_model(), tokens(2, 3)[:, :0], 2)


def test_generate_refuses_to_run_past_max_seq_len():
    model = _tiny_model()
    room = model.cfg.max_seq_len - 3
    assert generate(model, tokens(1, 3), 0).shape == (1, 3)
    with pytest.raises(ValueError, match=rf"max_new_tokens.*max_seq_len \({model.cfg.max_seq_len}\)"):
        generate(model, tokens(1, 3), room + 1)


@functools.cache
def _tiny_model():
    return model_for(tiny("satformer"))
