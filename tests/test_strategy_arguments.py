"""Every registered strategy refuses a bad number in any of its numeric options by name: NaN,
±inf, a bool and a string never reach an initialiser (where they would fail with torch's message,
or, as ``torch.full(nan)``, build a model that trains to NaN without a word). The options are read
from each constructor's signature, so a strategy added later is covered without a new test."""

from __future__ import annotations

import inspect
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from value_routing import STRATEGIES, ModelDims
from value_routing.strategies.checks import check_int, check_number

DIMS = ModelDims(d_model=16, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=32)
#: Arguments the model's dimensions fill in (``for_model``), not options.
FROM_DIMS = {"d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "head_dim"}


def numeric_options() -> list[tuple[str, str]]:
    found = []
    for name in STRATEGIES:
        for p in inspect.signature(STRATEGIES.get(name).__init__).parameters.values():
            if p.name not in FROM_DIMS and "float" in str(p.annotation):
                found.append((name, p.name))
    return found


OPTIONS = numeric_options()


def test_the_numeric_options_are_found():
    """The discovery above sees the options the checks were written for (a guard on the test)."""
    assert {("satformer", "init_std"), ("satformer", "bias_init"), ("satformer", "gate_scale"),
            ("static", "lambda1"), ("hyper", "scale_init"), ("mudd", "norm_eps"), ("attnres", "norm_eps"),
            ("shortcut", "norm_eps"), ("lerp", "mix_scale")} <= set(OPTIONS)


@pytest.mark.parametrize("strategy, option", OPTIONS, ids=[f"{s}-{o}" for s, o in OPTIONS])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "0.5"], ids=repr)
def test_a_bad_number_is_refused_by_name(strategy, option, bad):
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        STRATEGIES.get(strategy).for_model(DIMS, **{option: bad})


@settings(max_examples=60, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.booleans(),
                       st.none(), st.text(max_size=2)),
       minimum=st.one_of(st.none(), st.just(0.0)), strict=st.booleans(), optional=st.booleans())
def test_check_number_accepts_exactly_the_finite_numbers_in_range(value, minimum, strict, optional):
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    in_range = finite and (minimum is None or (value > minimum if strict else value >= minimum))
    legal = in_range or (optional and value is None)
    if legal:
        check_number("x", value, minimum, strict=strict, optional=optional)
    else:
        with pytest.raises(ValueError, match=r"^x must be " + ("None or " if optional else "") + "a finite number"):
            check_number("x", value, minimum, strict=strict, optional=optional)


@settings(max_examples=40, deadline=None)
@given(value=st.one_of(st.integers(-5, 5), st.floats(allow_nan=True), st.booleans(), st.none()))
def test_check_int_accepts_exactly_the_integers_from_low(value):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        check_int("n", value, 1)
    else:
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got"):
            check_int("n", value, 1)


@pytest.mark.parametrize("strict, legal", [(False, True), (True, False)])
def test_the_bound_itself_is_legal_unless_strict(strict, legal):
    if legal:
        check_number("x", 0.0, 0, strict=strict)
    else:
        with pytest.raises(ValueError, match=r"^x must be a finite number > 0, got 0.0"):
            check_number("x", 0.0, 0, strict=strict)
    with pytest.raises(ValueError, match=r"^norm_eps must be a finite number > 0"):  # an eps of 0 divides by 0
        STRATEGIES.get("shortcut").for_model(DIMS, norm_eps=0.0)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_an_unknown_option_is_named_with_the_known_ones(strategy):
    from value_routing import build_strategy, strategy_options

    known = ", ".join(strategy_options(strategy)) or "none"
    with pytest.raises(ValueError, match=rf"^unknown option 'typo_option' for strategy '{strategy}'; "
                                         rf"its options: {re.escape(known)}$"):
        build_strategy(strategy, DIMS, typo_option=1)


def test_the_hugging_face_adapter_and_the_config_say_the_same():
    from transformers import LlamaConfig, LlamaForCausalLM

    from value_routing import apply_value_routing

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match=r"^unknown options 'a', 'b' for strategy 'satformer'; its options: act, "):
        apply_value_routing(hf, "satformer", b=1, a=2)
    assert not any("routing" in name for name, _ in hf.named_modules())  # refused before any patching
