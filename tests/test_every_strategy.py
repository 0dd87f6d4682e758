"""Every strategy form (tests/forms.py) through the model paths that must not change its function:
torch.compile(fullgraph=True) == eager (forward and every gradient), the chunked LM-head loss ==
plain cross-entropy (loss and every gradient), and a safetensors checkpoint rebuilds the same network.
(Decode, padding, packing, causality and activation checkpointing run every form in test_model,
test_padding and test_lean_training; the HF wrapper in test_hf.)"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from forms import FORM_IDS, FORMS, assert_compile_matches_eager
from recipes.lm.model import CausalLM
from recipes.train import TrainConfig, make_optimizer
from recipes.train import checkpoint as ckpt
from test_model import model_for, tiny, tokens


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_compile_fullgraph_matches_eager(strategy, options, fresh_dynamo):
    """One compile per form, forward and backward, float64. The aot_eager backend runs the whole
    capture (dynamo, fullgraph: no graph break) and AOTAutograd (functionalised buffer writes, the
    custom autograd functions) without inductor's C++ codegen, which costs ~1 min of CPU per model
    cold; the blocks' inductor path is covered by test_model."""
    assert_compile_matches_eager(model_for(tiny(strategy, options, n_layers=3)).train(), tokens(2, 8))


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_chunked_loss_equals_plain_cross_entropy(strategy, options):
    model = model_for(tiny(strategy, options)).train()
    x, y = tokens(2, 9), tokens(2, 9, seed=1)
    y[1, -3:] = -100
    model(x, targets=y).backward()
    chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        torch.testing.assert_close(chunked[n], p.grad, rtol=1e-10, atol=1e-12, msg=n)


@pytest.mark.parametrize("strategy, options", FORMS, ids=FORM_IDS)
def test_safetensors_checkpoint_rebuilds_the_same_network(tmp_path, strategy, options):
    model = model_for(tiny(strategy, options), dtype=torch.float32)
    ckpt.save_checkpoint(tmp_path, 1, model, make_optimizer(model, TrainConfig()), {},
                         model_config=dataclasses.asdict(model.cfg))
    loaded = ckpt.load_model(ckpt.latest_checkpoint(tmp_path))
    assert isinstance(loaded, CausalLM) and loaded.cfg == model.cfg
    x = tokens(2, 8)
    torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
