"""What a study (:mod:`recipes.experiments.study`) runs: variants, model shape, tasks, seeds; the presets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from recipes.lm.builders import SIZES, model_config
from recipes.lm.config import ModelConfig
from recipes.eval.mqar import DEMO_MODEL, DEMO_TASK, DEMO_TRAIN, MQARConfig
from recipes.train.loop import TrainConfig
from recipes.lm.checks import check_min
from value_routing.strategies import STRATEGIES

@dataclass(frozen=True)
class Variant:
    """A named table row: registry ``strategy`` plus ``options`` over its builder's defaults, and
    ``model`` overrides of other :class:`~recipes.lm.config.ModelConfig` fields (the normalization
    baselines are options of the plain Transformer, not strategies)."""

    name: str
    strategy: str
    options: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"variant {self.name!r}: strategy must be one of {tuple(STRATEGIES)}, got {self.strategy!r}")
        reserved = {"strategy", "strategy_options", "d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                    "max_seq_len"} & set(self.model)
        if reserved:
            raise ValueError(f"variant {self.name!r}: model overrides cannot set {sorted(reserved)} (the study's shape "
                             "and the variant's strategy set them)")


#: The six strategies of the SATFormer paper's comparison, in the study's row order.
PAPER_STRATEGIES: tuple[str, ...] = ("baseline", "static", "satformer", "dense", "mudd", "hyper")

#: The variants a study can name. Ablations of SATFormer vary one option of the ``satformer`` row.
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    *(Variant(name, name) for name in PAPER_STRATEGIES),
    Variant("satformer-sigmoid", "satformer", {"act": "sigmoid"}),
    Variant("satformer-last4", "satformer", {"last_k": 4}),
    # relu gates start nearly closed; a 0.5 bias starts them half open, as static's λ1 = 0.5
    Variant("satformer-bias", "satformer", {"bias_init": 0.5}),
    # the layer-wise normalization baselines (evidence issue): options of the plain Transformer
    Variant("layernorm-scaling", "baseline", model={"layernorm_scaling": True}),
    Variant("peri-ln", "baseline", model={"peri_norm": True}),
    # the field's other reuse forms (forms issue), at their defaults; Block AttnRes with 4 blocks of the
    # 8-layer study model's 16 sublayers
    *(Variant(name, name) for name in ("lerp", "value_embed", "mhc", "attnres", "shortcut")),
    Variant("attnres-block", "attnres", {"block_size": 4}),
)}


@dataclass(frozen=True)
class Shape:
    """Width and depth of a study's models. ``paper_arch``: everything else as the paper presets
    (the ``small`` size: qk-norm and its ε, init, d_ff = 4 d_model, the authors' forms of the
    strategies, :data:`recipes.lm.builders.PAPER_OPTIONS`); else as the demo's ``tiny`` builders."""

    d_model: int = 128
    n_layers: int = 8
    n_heads: int = 4
    n_kv_heads: int = 2
    paper_arch: bool = True

    def __post_init__(self) -> None:
        check_min(self, 1, "d_model", "n_layers", "n_heads", "n_kv_heads")


def study_model_config(variant: Variant, shape: Shape, vocab_size: int, max_seq_len: int) -> ModelConfig:
    """The model of ``variant`` at ``shape``: the ``small`` preset (with ``shape.paper_arch``) or
    the ``tiny`` one made ``shape``'s width and depth, with the variant's strategy options."""
    size = "small" if shape.paper_arch else "tiny"
    options = dict(variant.options)
    dims = dict(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads,
                n_kv_heads=shape.n_kv_heads, vocab_size=vocab_size, max_seq_len=max_seq_len)
    if shape.paper_arch:  # keep the preset's FFN ratio at the narrower width
        dims["d_ff"] = SIZES[size]["d_ff"] // SIZES[size]["d_model"] * shape.d_model
    return model_config(size, variant.strategy, strategy_options=options, **dims, **variant.model)


#: Evaluations an LM run can add at its end (evaluation only; training is unchanged):
#: ``domains`` bits/byte on the held-out domains (:mod:`recipes.eval.domains`), ``probe`` the lexical
#: probe by depth (:mod:`recipes.eval.probe`), ``gates`` SATFormer's gate statistics
#: (:func:`recipes.eval.analyze.analyze_gates`; runs of other strategies record none).
LM_EVALS: tuple[str, ...] = ("domains", "probe", "gates")


@dataclass(frozen=True)
class Task:
    """One task's training budget; ``mqar`` set = MQAR accuracy, else LM loss on the embedded
    corpus (its first ``corpus_bytes``). ``shape`` overrides the study's model shape; ``evals``
    (LM only) are run at the end of every run (:data:`LM_EVALS`)."""

    train: TrainConfig
    mqar: MQARConfig | None = None
    shape: Shape | None = None
    corpus_bytes: int = 4_000_000
    evals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mqar is not None and self.train.seq_len != self.mqar.seq_len:
            raise ValueError(f"train.seq_len ({self.train.seq_len}) must equal mqar.seq_len ({self.mqar.seq_len})")
        bad = [e for e in self.evals if e not in LM_EVALS]
        if bad or len(set(self.evals)) != len(self.evals):
            raise ValueError(f"evals must be distinct names among {LM_EVALS}, got {list(self.evals)}")
        if self.evals and self.mqar is not None:
            raise ValueError(f"evals are LM evaluations; an MQAR task takes none, got {list(self.evals)}")

    @property
    def vocab_size(self) -> int:
        return self.mqar.vocab_size if self.mqar else 256

    @property
    def max_seq_len(self) -> int:
        return self.mqar.seq_len if self.mqar else max(SIZES["tiny"]["max_seq_len"], self.train.seq_len)


@dataclass(frozen=True)
class StudyConfig:
    """Variants × seeds × tasks (``lm`` and/or ``mqar``); ``curve_points`` training-loss points per run."""

    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    shape: Shape = Shape()
    lm: Task | None = None
    mqar: Task | None = None
    curve_points: int = 50
    baseline: str = "baseline"
    #: Variants run on the ``lm`` task only (ablations, to save the budget for more seeds).
    lm_only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"variants must be non-empty with unique names, got {names}")
        if self.baseline not in names:
            raise ValueError(f"variants must include the baseline {self.baseline!r} (paired Δ), got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be non-empty, unique and >= 0, got {list(self.seeds)}")
        if self.lm is None and self.mqar is None:
            raise ValueError("at least one task (lm, mqar) must be configured")
        if self.lm is not None and self.lm.mqar is not None:
            raise ValueError("lm must be a Task without mqar settings")
        if self.mqar is not None and self.mqar.mqar is None:
            raise ValueError("mqar must be a Task with mqar settings (an MQARConfig)")
        check_min(self, 1, "curve_points")
        if not set(self.lm_only) <= set(names) - {self.baseline}:
            raise ValueError(f"lm_only must name non-baseline variants of {names}, got {list(self.lm_only)}")
        for name, task in self.tasks.items():  # bad shapes or options fail here, naming the field
            for variant in self.variants:
                if name != "lm" and variant.name in self.lm_only:
                    continue
                study_model_config(variant, task.shape or self.shape, task.vocab_size, task.max_seq_len)

    @property
    def tasks(self) -> dict[str, Task]:
        return {name: task for name, task in (("lm", self.lm), ("mqar", self.mqar)) if task is not None}

    def override(self, seeds: Sequence[int] | None = None, variants: Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None) -> "StudyConfig":
        """A copy with other seeds, variants (names in :data:`VARIANTS`) or a subset of the tasks."""
        changes: dict[str, Any] = {}
        if seeds is not None:
            changes["seeds"] = tuple(seeds)
        if variants is not None:
            unknown = [v for v in variants if v not in VARIANTS]
            if unknown:
                raise ValueError(f"variants must be among {tuple(VARIANTS)}, got unknown {unknown}")
            changes["variants"] = tuple(VARIANTS[v] for v in variants)
            changes["lm_only"] = tuple(v for v in self.lm_only if v in variants)
        if tasks is not None:
            bad = [t for t in tasks if t not in self.tasks]
            if bad:
                raise ValueError(f"tasks must be among this preset's {tuple(self.tasks)}, got {bad}")
            changes.update({name: None for name in self.tasks if name not in tasks})
        return replace(self, **changes)


#: The ``tiny`` size's shape with the demo builders' architecture.
_TINY = Shape(**{k: SIZES["tiny"][k] for k in ("d_model", "n_layers", "n_heads", "n_kv_heads")}, paper_arch=False)


def _variants(*names: str) -> tuple[Variant, ...]:
    return tuple(VARIANTS[n] for n in names)


def demo_preset() -> StudyConfig:
    """The demo's exact settings (``python -m recipes.train``) over seeds 0-3: its noise scale."""
    return StudyConfig(
        variants=_variants(*PAPER_STRATEGIES), seeds=(0, 1, 2, 3), shape=_TINY,
        lm=Task(TrainConfig()),
        mqar=Task(DEMO_TRAIN, DEMO_TASK, Shape(**DEMO_MODEL, paper_arch=False)),
    )


def smoke_preset() -> StudyConfig:
    """Seconds-long: checks the pipeline end to end (the tests use shapes like it)."""
    train = TrainConfig(steps=6, batch_size=2, seq_len=16, warmup=1, eval_batches=1)
    task = MQARConfig(vocab_size=16, seq_len=16, num_kv_pairs=2)
    return StudyConfig(
        variants=_variants("baseline", "satformer"), seeds=(0, 1), shape=Shape(32, 3, 2, 1), curve_points=3,
        lm=Task(train), mqar=Task(replace(train, seq_len=16), task),
    )


#: The published MQAR task: one pair more than the demo's and twice its length. Probes of the
#: baseline alone (4 layers × d_model 64 unless noted; accuracy ≈ 1 / pairs is the "answer any
#: context value" plateau) found no setting it leaves the plateau in within a CPU budget, so no
#: harder one either: vocab 128 / seq 64 / 8 pairs at 0.8M tokens: 0.09, 0.10; vocab 64 / seq 32 /
#: 6 pairs at 0.8M: 0.20, 0.21 (lr 1e-2: 0.18, 0.19); vocab 64 / seq 64 / 8 pairs at 4M tokens:
#: 0.15, 0.15 (lr 1e-3 and 1e-2: ≤ 0.15 through 1.4M, stopped). This task: 1.5M tokens 0.30, 0.30;
#: 3M 0.32, 0.32; batch 32 × 3200 steps 0.31, 0.31; lr 1e-2 × 3000 steps 0.30; the demo's
#: architecture (no qk-norm) at the published budget 0.31; d_model 128 × 8 layers 0.25-0.28 through
#: 1100 steps of 32 (stopped). Complete probes: docs/results/mqar_probes/runs.jsonl
#: (``scripts/mqar_probe.py``). Final accuracy is therefore close to all-or-nothing per run; the
#: study also records accuracy along training, whose mean (the area under the curve) and the step
#: that reaches 0.9 are graded.
PUBLISHED_MQAR = MQARConfig(vocab_size=32, seq_len=32, num_kv_pairs=4)


def published_preset() -> StudyConfig:
    """docs/results.md: 6 strategies and 3 SATFormer ablations × 5 seeds × (LM, MQAR; last_k on LM only).

    About 95 minutes with ``--workers 2`` from the mean one-thread run times of the first seeds
    (measured with both cores busy): LM 144 s × 45 runs, MQAR 125 s × 40 runs. The ablations ran
    on LM only at first (to fit 90 minutes); sigmoid and bias were added to MQAR after the main
    MQAR runs showed the relu gate never leaving the plateau, to test the gate-start explanation
    on the retrieval task too — no setting was changed. Narrower and shallower than the paper's ``small``
    (d_model 768, 11 layers) with its architecture choices (:class:`Shape`); 8 layers, so 7
    read ``V1``.
    """
    lm = TrainConfig(steps=250, batch_size=16, seq_len=128, lr=3e-3, warmup=25, eval_batches=16)
    mqar = TrainConfig(steps=1000, batch_size=64, seq_len=PUBLISHED_MQAR.seq_len, lr=3e-3, warmup=30, eval_batches=8)
    ablations = ("satformer-sigmoid", "satformer-bias", "satformer-last4")
    return StudyConfig(
        variants=_variants(*PAPER_STRATEGIES, *ablations), seeds=(0, 1, 2, 3, 4), shape=Shape(128, 8, 4, 2),
        lm=Task(lm), mqar=Task(mqar, PUBLISHED_MQAR, Shape(64, 4, 4, 2)),
        lm_only=("satformer-last4",),  # the 4-layer MQAR model has only 3 layers that read V1
    )


#: The budget ladder of the evidence issue: the published LM budget (250 steps) × 4 and × 16, with
#: the published model (:func:`published_preset`'s shape) and data.
LADDER_STEPS: tuple[int, ...] = (1000, 4000)
#: The baseline-only learning-rate sweep at 1000 steps: the published lr and half a decade either side,
#: extended by a half-decade step wherever the best lr sits at an edge of the grid, so that the lr
#: chosen is bracketed (3e-4 was added when 1e-3 led after both seeds of 1e-3 and 3e-3 and the first
#: of 1e-2; the baseline alone decides, as for the rest of the sweep).
#: The ladder reuses the sweep's best lr for every variant at every budget (never tuned per variant).
SWEEP_LRS: dict[str, float] = {"3e-4": 3e-4, "1e-3": 1e-3, "3e-3": 3e-3, "1e-2": 1e-2}
#: What every ladder run evaluates at its end.
LADDER_EVALS: tuple[str, ...] = LM_EVALS


def ladder_train(steps: int, lr: float) -> TrainConfig:
    """The published LM budget at ``steps`` and ``lr``; warmup stays 10 % of the steps (25 of 250)."""
    return TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=lr, warmup=steps // 10, eval_batches=16)


#: The sweep's best learning rate (lowest mean validation loss of the baseline over the sweep's seeds),
#: set once the sweep's runs were committed (a test checks it against them): 1e-3 (mean 1.370 over
#: seeds 0-1), bracketed by 3e-4 (1.499) and 3e-3 (1.389).
LADDER_LR: float | None = 1e-3
#: The ladder's rungs: (variants, seeds) per budget, in the evidence issue's priority order.
LADDER_RUNGS: dict[int, tuple[tuple[str, ...], tuple[int, ...]]] = {
    1000: (("baseline", "static", "satformer", "satformer-bias", "layernorm-scaling", "peri-ln"), (0, 1, 2, 3, 4)),
    4000: (("baseline", "static", "satformer"), (0, 1, 2)),
}
#: The forms issue's strategies at the first rung, 3 seeds (their baseline runs are the 1000-step rung's).
LADDER_FORMS: tuple[str, ...] = ("baseline", "lerp", "value_embed", "mhc", "attnres", "attnres-block", "shortcut")
#: The seeds of the forms at 1000 steps (priority (c) of the evidence issue).
LADDER_FORMS_SEEDS: tuple[int, ...] = (0, 1, 2)


def sweep_winner(runs: Sequence[Mapping[str, Any]]) -> float:
    """The learning rate whose finished sweep runs have the lowest mean validation loss; every
    :data:`SWEEP_LRS` value must have all its seeds."""
    by_lr: dict[float, list[float]] = {}
    for run in runs:
        by_lr.setdefault(run["spec"]["train"]["lr"], []).append(run["val_loss"])
    seeds = len(sweep_preset(next(iter(SWEEP_LRS))).seeds)
    missing = [lr for lr in SWEEP_LRS.values() if len(by_lr.get(lr, ())) < seeds]
    if missing:
        raise ValueError(f"the sweep is unfinished: learning rates {missing} lack some of their {seeds} seeds")
    return min(SWEEP_LRS.values(), key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))


def ladder_preset(steps: int, forms: bool = False) -> StudyConfig:
    """The rung of ``steps`` steps: its variants and seeds (:data:`LADDER_RUNGS`; with ``forms``,
    :data:`LADDER_FORMS` × 3 seeds at 1000 steps) at :data:`LADDER_LR`."""
    if LADDER_LR is None:
        raise ValueError("the ladder's learning rate is the sweep's winner: run the sweep-lr* presets first "
                         "and set study_config.LADDER_LR")
    variants, seeds = (LADDER_FORMS, LADDER_FORMS_SEEDS) if forms else LADDER_RUNGS[steps]
    return StudyConfig(variants=_variants(*variants), seeds=seeds, shape=Shape(128, 8, 4, 2),
                       lm=Task(ladder_train(steps, LADDER_LR), evals=LADDER_EVALS))


def sweep_preset(lr: str) -> StudyConfig:
    """The baseline alone at 1000 steps and learning rate ``SWEEP_LRS[lr]``, seeds 0 and 1."""
    return StudyConfig(variants=_variants("baseline"), seeds=(0, 1), shape=Shape(128, 8, 4, 2),
                       lm=Task(ladder_train(LADDER_STEPS[0], SWEEP_LRS[lr]), evals=LADDER_EVALS))


#: ``--preset`` choices.
PRESETS: dict[str, Callable[[], StudyConfig]] = {
    "published": published_preset, "demo": demo_preset, "smoke": smoke_preset,
    **{f"sweep-lr{lr}": (lambda lr=lr: sweep_preset(lr)) for lr in SWEEP_LRS},
    **{f"ladder-{steps}": (lambda steps=steps: ladder_preset(steps)) for steps in LADDER_RUNGS},
    "ladder-1000-forms": lambda: ladder_preset(LADDER_STEPS[0], forms=True),
}
