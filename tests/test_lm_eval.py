"""lm-eval adapter: offline evaluation of local tasks; scores equal log-softmax sums from the model."""

import os
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # nothing here may touch the network

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402

from recipes.lm.builders import satformer  # noqa: E402
from recipes.lm.generate import generate  # noqa: E402
from recipes.eval.lm_eval_adapter import ValueRoutingLM  # noqa: E402
from recipes.lm.model import CausalLM  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval"
MAX_LEN = 32  # shorter than the longest document, so rolling windows are exercised
NEWLINE = ord("\n")  # the byte tokenizer's prefix token


@pytest.fixture(scope="module")
def model() -> CausalLM:
    torch.manual_seed(0)
    cfg = satformer("tiny", d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=MAX_LEN)
    return CausalLM(cfg).eval()


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@torch.no_grad()
def direct_loglikelihood(model: CausalLM, context: list[int], continuation: list[int]) -> float:
    """``sum_t log softmax(logits)[t, continuation_t]`` from one unbatched forward.

    Like the adapter (and lm-eval's HF model), keeps the last ``MAX_LEN + 1`` tokens.
    """
    whole = (context + continuation)[-(MAX_LEN + 1) :]
    tokens = torch.tensor([whole])
    logprobs = F.log_softmax(model(tokens[:, :-1]).logits[0].float(), dim=-1)
    start = len(whole) - len(continuation) - 1
    return sum(logprobs[start + i, tok].item() for i, tok in enumerate(continuation))


def direct_rolling(model: CausalLM, tokens: list[int], prefix: int, window: int) -> float:
    """Each token scored once, in chunks of ``window`` targets; the last chunk gets a full window."""
    seq = [prefix] + tokens  # seq[i] is the input that predicts tokens[i]
    total, start = 0.0, 0
    while start < len(tokens):
        end = min(start + window, len(tokens))
        first = max(0, end - window)
        inputs = seq[first:end]
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([inputs])).logits[0].float(), dim=-1)
        total += sum(logprobs[j - first, tokens[j]].item() for j in range(start, end))
        start = end
    return total


@pytest.fixture(scope="module")
def evaluated(model, tmp_path_factory):
    """Run lm-eval's ``simple_evaluate`` on the three local tasks, fully offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        mp.chdir(TASKS)  # the task YAMLs name their data files relative to their folder
        from lm_eval import simple_evaluate
        from lm_eval.tasks import TaskManager

        lm = ValueRoutingLM(model, tokenizer="byte", batch_size=4)
        return simple_evaluate(
            model=lm,
            tasks=["vr_tiny_mc", "vr_tiny_rolling", "vr_tiny_gen"],
            task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
            log_samples=True,
            bootstrap_iters=0,
        )


def test_multiple_choice_scores_equal_direct_log_softmax_sums(model, evaluated):
    samples = evaluated["samples"]["vr_tiny_mc"]
    assert len(samples) == 4
    correct = []
    for sample in samples:
        scores = [ll for ll, _greedy in sample["filtered_resps"]]
        want = [direct_loglikelihood(model, encode(ctx), encode(cont)) for ctx, cont in sample["arguments"]]
        assert scores == pytest.approx(want, rel=1e-5, abs=1e-4)
        correct.append(max(range(len(want)), key=want.__getitem__) == sample["doc"]["label"])
    assert evaluated["results"]["vr_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))


def test_rolling_loglikelihood_equals_windowed_direct_sum(model, evaluated):
    samples = evaluated["samples"]["vr_tiny_rolling"]
    assert max(len(s["doc"]["text"]) for s in samples) > 2 * MAX_LEN
    for sample in samples:
        ((text,),) = sample["arguments"]
        want = direct_rolling(model, encode(text), NEWLINE, MAX_LEN)
        assert sample["filtered_resps"] == pytest.approx([want], rel=1e-5, abs=1e-4)
    short = samples[-1]["doc"]["text"]  # shorter than one window: one plain forward
    assert samples[-1]["filtered_resps"] == pytest.approx(
        [direct_loglikelihood(model, [NEWLINE], encode(short))], rel=1e-5, abs=1e-4
    )


def test_generate_until_equals_greedy_generate_cut_at_the_stop_string(model, evaluated):
    for sample in evaluated["samples"]["vr_tiny_gen"]:
        ((context, gen_kwargs),) = sample["arguments"]
        prompt = torch.tensor([encode(context)])
        ids = generate(model, prompt, gen_kwargs["max_gen_toks"])[0, prompt.shape[1] :].tolist()
        want = bytes(ids).decode("utf-8", errors="replace").split("\n")[0]
        assert sample["filtered_resps"] == [want]
    # A stop string that does occur: generation stops there and the text is cut before it.
    prompt = torch.tensor([encode("def f(x):")])
    full = bytes(generate(model, prompt, 12)[0, prompt.shape[1] :].tolist()).decode("utf-8", errors="replace")
    stop = full[5:7]
    request = Instance("generate_until", {}, ("def f(x):", {"until": [stop], "max_gen_toks": 12}), 0)
    assert ValueRoutingLM(model).generate_until([request], disable_tqdm=True) == [full.split(stop)[0]]


def test_batching_does_not_change_scores(model):
    requests = [
        Instance("loglikelihood", {}, (ctx, cont), i)
        for i, (ctx, cont) in enumerate(
            [("def f(x):", " return x"), ("a" * 10, "b" * 30), ("", "import os"), ("x = 1", "\n")]
        )
    ]
    one = ValueRoutingLM(model, batch_size=1).loglikelihood(requests, disable_tqdm=True)
    many = ValueRoutingLM(model, batch_size=3).loglikelihood(requests, disable_tqdm=True)
    assert [ll for ll, _ in many] == pytest.approx([ll for ll, _ in one], rel=1e-5, abs=1e-4)
    assert [g for _, g in many] == [g for _, g in one]
    # Empty context is conditioned on the prefix token; an over-long request keeps its last MAX_LEN + 1 tokens.
    assert one[2][0] == pytest.approx(direct_loglikelihood(model, [NEWLINE], encode("import os")), abs=1e-4)
    assert one[1][0] == pytest.approx(direct_loglikelihood(model, encode("a" * 10), encode("b" * 30)), abs=1e-4)


def test_registered_by_name_and_loads_a_saved_hf_checkpoint(model, tmp_path):
    assert get_model("value_routing") is ValueRoutingLM
    pytest.importorskip("transformers")
    from recipes.interop.hf import ValueRoutingForCausalLM

    ValueRoutingForCausalLM.from_causal_lm(model).save_pretrained(tmp_path)
    lm = ValueRoutingLM.create_from_arg_string(f"pretrained={tmp_path},tokenizer=byte", {"batch_size": 2})
    request = Instance("loglikelihood", {}, ("print(", "'hi')"), 0)
    (score, _), = lm.loglikelihood([request], disable_tqdm=True)
    assert score == pytest.approx(direct_loglikelihood(model, encode("print("), encode("'hi')")), abs=1e-4)


def test_transformers_tokenizer_is_used_without_special_tokens(model):
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    raw.train_from_iterator(["def f(x): return x", "import os", "print('hi')"] * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    lm = ValueRoutingLM(model, tokenizer=tok)
    assert lm.prefix_token_id == tok.bos_token_id and lm.eot_token_id == tok.eos_token_id
    ids = lm.tok_encode("import os")
    assert ids == tok.encode("import os", add_special_tokens=False) and tok.bos_token_id not in ids
    (score, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("", "import os"), 0)], disable_tqdm=True)
    assert score == pytest.approx(direct_loglikelihood(model, [tok.bos_token_id], ids), abs=1e-4)


def test_bad_arguments_raise_value_errors(model):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        ValueRoutingLM(model, batch_size="auto")
    with pytest.raises(ValueError, match="max_length must be <="):
        ValueRoutingLM(model, max_length=MAX_LEN + 1)
    with pytest.raises(ValueError, match="tokenizer must be 'byte'"):
        ValueRoutingLM(model, tokenizer="no-such-tokenizer")
    with pytest.raises(ValueError, match="pretrained must be"):
        ValueRoutingLM("no/such/dir")
    lm = ValueRoutingLM(model)
    request = Instance("generate_until", {}, ("x", {"until": ["\n"], "top_p": 0.9}), 0)
    with pytest.raises(ValueError, match=r"\['top_p'\] are not supported; allowed: \('until'"):
        lm.generate_until([request], disable_tqdm=True)


def test_batched_generate_until_equals_one_at_a_time():
    """Uneven prompts, mixed options, stop strings that fire: batches give exactly the unbatched texts."""
    torch.manual_seed(1)
    cfg = satformer("tiny", d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=MAX_LEN)
    lively = CausalLM(cfg).eval()
    with torch.no_grad():  # an initialised model's greedy choice barely depends on the context
        for p in lively.parameters():
            p.add_(0.3 * torch.randn_like(p))
    contexts = ["def f(x):", "import os", "", "a = [1, 2, 3]\nb", "x", "print('hello world')", "class A:", "# c"]
    first = ValueRoutingLM(lively).generate_until(
        [Instance("generate_until", {}, (c, {"until": [], "max_gen_toks": 10}), 0) for c in contexts], True)
    requests = [
        Instance("generate_until", {}, (c, {"until": [text[3:5]] if i % 2 else [], "max_gen_toks": 6 + 4 * (i % 2)}), i)
        for i, (c, text) in enumerate(zip(contexts, first))
    ]
    one = ValueRoutingLM(lively, batch_size=1).generate_until(requests, disable_tqdm=True)
    many = ValueRoutingLM(lively, batch_size=3).generate_until(requests, disable_tqdm=True)
    assert many == one
    assert len(set(one)) > 4 and any(len(t) < 10 for t in one[1::2])  # varied texts; stop strings cut
