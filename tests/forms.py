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
