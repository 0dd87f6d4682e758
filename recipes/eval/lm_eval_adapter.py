"""An lm-evaluation-harness model for our language models, registered as ``"value_routing"``.

Scores with :class:`recipes.lm.model.CausalLM` directly (one forward per batch of requests,
length-sorted and right-padded: causal attention makes the padding invisible to real tokens) and
generates with its KV cache (batches of requests with the same options, length-sorted and
left-padded with an attention mask). Works with the :class:`~recipes.data.ByteTokenizer` or any tokenizer
with ``encode`` / ``decode`` (a ``transformers`` tokenizer is called without special tokens)::

    from lm_eval import simple_evaluate
    from recipes.eval.lm_eval_adapter import ValueRoutingLM
    lm = ValueRoutingLM(model, tokenizer="byte", batch_size=8)
    simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path="tasks/"))

or by name: ``simple_evaluate(model="value_routing", model_args="pretrained=ckpt_dir")`` where
``ckpt_dir`` was written by :meth:`recipes.interop.hf.ValueRoutingForCausalLM.save_pretrained`. Nothing is
downloaded. Needs the optional extra ``pip install 'value_routing[eval]'``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("recipes.eval.lm_eval_adapter needs lm-eval: pip install 'value_routing[eval]'") from err

from recipes.data import ByteTokenizer
from recipes.lm.generate import sample
from recipes.lm.model import CausalLM, KVCache

#: Generation options ``generate_until`` understands (anything else raises).
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k")


@register_model("value_routing")
class ValueRoutingLM(TemplateLM):
    """lm-eval ``LM`` over a :class:`CausalLM` (or a ``ValueRoutingForCausalLM``, or its saved directory).

    ``prefix_token_id`` conditions empty contexts and rolling windows (default: the
    tokenizer's BOS/EOS, or ``"\\n"`` for the byte tokenizer, which has no special tokens).
    Contexts longer than ``max_length`` (default: the model's ``max_seq_len``) keep their last
    tokens. ``max_batch_size`` is accepted for lm-eval's command line and unused.
    """

    def __init__(
        self,
        pretrained: Any,
        tokenizer: Any = "byte",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = None,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = _load_model(pretrained)
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self._device = next(self.model.parameters()).device
        self.tokenizer = _load_tokenizer(tokenizer)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_length = _positive_int("max_length", max_length or self.model.cfg.max_seq_len)
        limit = self.model.cfg.max_seq_len
        if self.max_length > limit:
            raise ValueError(f"max_length must be <= the model's max_seq_len {limit}, got {max_length}")
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self._eot = _special_id(self.tokenizer, ("eos_token_id", "eos_id"))
        prefix = prefix_token_id if prefix_token_id is not None else _special_id(self.tokenizer, ("bos_token_id",))
        prefix = prefix if prefix is not None else self._eot
        if prefix is None and isinstance(self.tokenizer, ByteTokenizer):
            prefix = ord("\n")
        if prefix is None or not 0 <= int(prefix) < self.model.cfg.vocab_size:
            raise ValueError(f"prefix_token_id must be in [0, {self.model.cfg.vocab_size}), got {prefix}")
        self._prefix = int(prefix)
        self._generator = torch.Generator(device=self._device).manual_seed(int(seed))

    # ---- tokenization -------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._prefix if self._eot is None else self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        if hasattr(self.tokenizer, "eos_token_id"):  # a transformers tokenizer
            return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    # ---- scoring ------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is the greedy decode)`` per request."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            idx = order[start : start + self.batch_size]
            for i, res in zip(idx, self._score_batch([(requests[i][1], requests[i][2]) for i in idx])):
                results[i] = res
                self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
        return results

    @torch.no_grad()
    def _score_batch(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        inputs, conts = [], []
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("continuation must encode to at least one token")
            if len(continuation) > self.max_length:
                raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            inputs.append(whole[:-1])
            conts.append(list(continuation))
        width = max(len(x) for x in inputs)
        batch = torch.zeros(len(inputs), width, dtype=torch.long, device=self._device)
        for row, x in enumerate(inputs):
            batch[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        logprobs = F.log_softmax(self.model(batch).logits.float(), dim=-1)
        out = []
        for row, (x, cont) in enumerate(zip(inputs, conts)):
            lp = logprobs[row, len(x) - len(cont) : len(x)]
            target = torch.tensor(cont, device=self._device)
            total = lp.gather(-1, target[:, None]).sum().item()
            out.append((total, bool((lp.argmax(-1) == target).all())))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each document's total log-likelihood, scored in disjoint windows of ``max_length``."""
        windows, owner = [], []
        for doc, req in enumerate(requests):
            (text,) = req.args
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(self.tok_encode(text), self.prefix_token_id, self.max_length, 1),
            ):
                windows.append(((text, None), ctx, cont))
                owner.append(doc)
        totals = [0.0] * len(requests)
        for doc, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[doc] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations, ``batch_size`` requests at a time: requests with the same options are
        sorted by prompt length and left-padded; greedy results equal one-at-a-time decoding."""
        jobs = [(self._gen_options(dict(req.args[1])), req.args[0]) for req in requests]
        prompts = []
        for (_until, max_new, _temperature, _top_k), context in jobs:
            prompts.append((self.tok_encode(context) or [self.prefix_token_id])[-(self.max_length - max_new) :])
        order = sorted(range(len(jobs)), key=lambda i: (repr(jobs[i][0]), -len(prompts[i])))
        out: list[str] = [""] * len(jobs)
        bar = tqdm(total=len(jobs), disable=disable_tqdm, desc="generate_until")
        start = 0
        while start < len(order):
            options = jobs[order[start]][0]
            idx = [order[start]]
            while len(idx) < self.batch_size and start + len(idx) < len(order) and jobs[order[start + len(idx)]][0] == options:
                idx.append(order[start + len(idx)])
            for i, text in zip(idx, self._generate_batch([prompts[i] for i in idx], *options)):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(idx))
            start += len(idx)
        bar.close()
        return out

    def _gen_options(self, gen_kwargs: dict[str, Any]) -> tuple[tuple[str, ...], int, float, int | None]:
        """``(until, max_new_tokens, temperature, top_k)`` from lm-eval's generation options."""
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"generation options {unknown} are not supported; allowed: {GEN_KWARGS}")
        until = gen_kwargs.get("until") or []
        until = (until,) if isinstance(until, str) else tuple(until)
        max_new = _positive_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        temperature = float(gen_kwargs.get("temperature", 0.0)) if gen_kwargs.get("do_sample", False) else 0.0
        return until, min(max_new, self.max_length - 1), temperature, gen_kwargs.get("top_k")

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], until: tuple[str, ...], max_new: int, temperature: float, top_k: int | None
    ) -> list[str]:
        """Decode left-padded ``prompts`` together; a row stops at EOT or a stop string."""
        width = max(len(p) for p in prompts)
        batch = torch.full((len(prompts), width), self.prefix_token_id, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, p in enumerate(prompts):
            batch[row, width - len(p) :], mask[row, width - len(p) :] = torch.tensor(p), 1
        uneven = any(len(p) != width for p in prompts)  # equal lengths take the plain causal path
        cache = KVCache.allocate(self.model.cfg, len(prompts), width + max_new, self._device,
                                 self.model.embed.weight.dtype)
        logits, cache = self.model(batch.to(self._device), cache=cache,
                                   attention_mask=mask.to(self._device) if uneven else None)
        generated: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in range(max_new):
            nxt = sample(logits[:, -1], temperature, top_k, self._generator)
            for row, token in enumerate(nxt.tolist()):
                if done[row]:
                    continue
                if self._eot is not None and token == self._eot:
                    done[row] = True
                    continue
                generated[row].append(token)
                done[row] = any(stop in self.tok_decode(generated[row]) for stop in until)
            if all(done):
                break
            if step < max_new - 1:
                logits, cache = self.model(nxt[:, None], cache=cache, validate=False)
        return [_cut(self.tok_decode(g), until) for g in generated]


def _cut(text: str, until: Iterable[str]) -> str:
    """``text`` up to the first occurrence of any stop string."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return number


def _special_id(tokenizer: Any, names: Sequence[str]) -> int | None:
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def _load_model(pretrained: Any) -> CausalLM:
    if isinstance(pretrained, CausalLM):
        return pretrained
    if isinstance(getattr(pretrained, "model", None), CausalLM):  # recipes.interop.hf.ValueRoutingForCausalLM
        return pretrained.model
    if isinstance(pretrained, (str, os.PathLike)) and os.path.isdir(pretrained):
        from recipes.interop.hf import ValueRoutingForCausalLM

        return ValueRoutingForCausalLM.from_pretrained(pretrained, local_files_only=True).model
    raise ValueError(
        "pretrained must be a CausalLM, a ValueRoutingForCausalLM or a local directory written by save_pretrained, "
        f"got {pretrained!r}"
    )


def _load_tokenizer(tokenizer: Any) -> Any:
    if not isinstance(tokenizer, (str, os.PathLike)):
        if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode")):
            raise ValueError(f"tokenizer must have encode and decode methods, got {type(tokenizer).__name__}")
        return tokenizer
    if str(tokenizer) == "byte":
        return ByteTokenizer()
    if os.path.isdir(tokenizer):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    raise ValueError(f"tokenizer must be 'byte', a local tokenizer directory or a tokenizer object, got {tokenizer!r}")


__all__ = ["GEN_KWARGS", "ValueRoutingLM"]
