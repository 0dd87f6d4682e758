"""The strategy forms every model-level test runs: each registered strategy at its defaults, plus
the non-default forms that take another code path (a new ``form``, a constraint, a block size).

A strategy registered in :data:`value_routing.STRATEGIES` joins :data:`FORMS` by itself; add a
form here when an option switches to different code (what its defaults do not exercise).
"""

from value_routing import STRATEGIES

#: ``(strategy, options)`` beyond the defaults.
EXTRA_FORMS: list[tuple[str, dict]] = [
    ("dense", {"dilation": 2, "period": 2}),
    ("mudd", {"form": "authors"}),
    ("hyper", {"form": "authors"}),
    ("attnres", {"block_size": 2}),
    ("shortcut", {"gate": True, "x0_norm": True}),  # the per-token λ0 and the normed embedding
    ("satformer", {"gate_scale": 0.0}),  # the scaled gate: the HF adapter's function-preserving start
    ("value_embed", {"gate": False, "layers": "shared"}),  # the plain form; tables shared by two layers
    ("mhc", {"form": "ours"}),
    ("lerp", {"mix_scale": 0.0}),  # the scaled lerp weight: the HF adapter's function-preserving start
    ("attnres", {"scale_by_sources": True}),  # mixes times their source count: the HF adapter's start
]

#: Every registered strategy at its defaults, then :data:`EXTRA_FORMS`.
FORMS: list[tuple[str, dict]] = [(s, {}) for s in sorted(STRATEGIES)] + EXTRA_FORMS

#: pytest ids of :data:`FORMS`.
FORM_IDS: list[str] = [s + "".join(f"-{k}={v}" for k, v in o.items()) for s, o in FORMS]


def assert_compile_matches_eager(model, x) -> None:
    """torch.compile(fullgraph=True, aot_eager) == eager: the logits and every parameter gradient."""
    import torch

    eager = model(x).logits
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(x).logits
    out.sum().backward()
    torch.testing.assert_close(out, eager)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def assert_decode_and_padding_match(model, cfg, x, side: str = "left") -> None:
    """Prefill 4 tokens then decode one at a time == the full forward; a padded batch == each prompt alone."""
    import torch

    from recipes.lm.model import KVCache
    from test_model import tokens
    from test_padding import padded

    full = model(x).logits
    cache = KVCache.allocate(cfg, x.shape[0], x.shape[1], dtype=torch.float64)
    out, cache = model(x[:, :4], cache=cache)
    steps = [out]
    for t in range(4, x.shape[1]):
        out, cache = model(x[:, t : t + 1], cache=cache)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full)
    prompts = [tokens(1, n, seed=n)[0] for n in (5, 2, 7)]
    batch, mask, cols = padded(prompts, side)
    logits = model(batch, attention_mask=mask).logits
    for row, (p, col) in enumerate(zip(prompts, cols)):
        torch.testing.assert_close(logits[row, col], model(p[None]).logits[0], rtol=1e-10, atol=1e-10)
