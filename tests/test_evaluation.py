"""Eval as a trial runs it: the loss without full-vocabulary logits, and work shared out by rank.

``evaluate_loss`` and ``label_logprobs`` build logits only where a loss or a label needs them, a
chunk at a time; these tests hold them to the plain full-logits computation they replace (the
reference functions below are that code), on tiny checkpoints of real architectures with their
LoRA adapters, in full precision and in 4-bit, and Gemma-2's soft-capped logits. A memory probe
shows the chunked loss never holds anything near batch x sequence x vocabulary.

Ranks: every rank must make the same number of forward calls (under ZeRO-3 each one is a
collective); ``shard_calls`` is checked as a pure function, and the sharded scorers by summing what
each rank would all-reduce. The 2-process ZeRO-3 run is in tests/test_deepspeed.py.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from trainers import evaluation
from trainers.chat import IGNORE_INDEX
from trainers.evaluation import eval_batches, evaluate_loss, label_logprobs, shard_calls


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()  # tiny matrices; a second thread only waits (see test_families)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the code being replaced


def full_logits_loss(model, batches) -> float:
    """The eval loss from the whole batch's fp32 logits (what ``evaluate_loss`` computed before)."""
    loss_sum, count = 0.0, 0.0
    with evaluation.eval_mode(model):
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            loss_sum += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                reduction="sum").item()
            count += (labels != IGNORE_INDEX).sum().item()
    return loss_sum / count


def full_logits_label_logprobs(model, prompts, options, pad_id) -> list[list[float]]:
    """Every (prompt, option) scored from the full log-softmax, one pair at a time."""
    out = []
    with evaluation.eval_mode(model):
        for p in prompts:
            row = []
            for o in options:
                logp = torch.log_softmax(model(input_ids=torch.tensor([p + o])).logits.float(), -1)[0]
                row.append(sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(o)))
            out.append(row)
    return out


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """``tiny(family)``: a tiny checkpoint of the family (random weights), built on first use."""
    from stand_ins import conversation_texts, finetome_rows, write_jsonl
    from stand_ins.tiny import write_tiny_model
    from trainers.families import get_family

    root = tmp_path_factory.mktemp("evaluation")
    chats = finetome_rows(40)
    built: dict[str, str] = {}

    def tiny(name: str) -> str:
        if name not in built:
            built[name] = str(write_tiny_model(root / f"tiny-{name}", get_family(name), conversation_texts(chats),
                                               pretrain_steps=0))
        return built[name]

    return {"tiny": tiny, "chat": str(write_jsonl(chats, root / "finetome.jsonl"))}


def trial_model(assets, family: str, quantization: str):
    """The model a chat-SFT trial trains (LoRA on the base, 4-bit or full), its tokenizer and eval data."""
    from trainers.config import TrainSettings
    from trainers.families import get_family
    from trainers.model import build_model
    from trainers.tasks import get_task

    settings = TrainSettings(model=assets["tiny"](family), dataset=assets["chat"], quantization=quantization,
                             zero_stage=0, max_seq_length=128, eval_fraction=0.4, precision="fp32", r=8,
                             lora_alpha=16, seed=0).validate()
    task = get_task("chat_sft")
    tok = task.load_tokenizer(settings)
    prepared = task.prepare(settings, tok)
    model = build_model(settings, get_family(family), task, "fp32", torch.device("cpu"))
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters a say in the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model, tok, prepared


def random_decoder(config_cls, **config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=16, **config)
    return AutoModelForCausalLM.from_config(cfg).eval()


def random_batches(vocab: int, rows: int, width: int, n: int = 1) -> list[dict]:
    """Right-padded batches of random tokens, labelled on the second half of each row."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(vocab, (rows, width), generator=gen)
        lengths = torch.randint(width // 2, width + 1, (rows,), generator=gen)
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        labels[:, : width // 2] = IGNORE_INDEX
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


# ----------------------------------------------------------------------------- loss without full logits


@pytest.mark.parametrize("family,quantization", [("llama", "none"), ("llama", "4bit"), ("gemma2", "none"),
                                                 ("gemma2", "4bit"), ("gemma", "none"), ("qwen2", "4bit"),
                                                 ("mistral", "none"), ("phi3", "none")])
def test_chunked_eval_loss_equals_the_full_logits_loss(assets, monkeypatch, capsys, family, quantization):
    model, tok, prepared = trial_model(assets, family, quantization)
    batches = eval_batches(prepared.eval.examples, tok.pad_token_id)
    assert len(batches) >= 2
    # chunks of ~3 tokens: every batch is scored in many pieces
    monkeypatch.setattr(evaluation, "LOGITS_PER_CHUNK", 3 * model.config.vocab_size)
    assert evaluate_loss(model, batches) == pytest.approx(full_logits_loss(model, batches), rel=1e-6)
    assert "eval builds its full logits" not in capsys.readouterr().err  # the chunked path ran, no fallback
    if family == "gemma2":
        assert model.config.final_logit_softcapping  # Gemma-2's logits are soft-capped: that path ran


def test_soft_capped_logits_are_capped_in_the_chunked_loss():
    """A cap small enough to matter (0.5): the chunked loss is the model's, not lm_head's raw output's."""
    from transformers import Gemma2Config

    model = random_decoder(Gemma2Config, vocab_size=300, final_logit_softcapping=0.5)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # logits of a few units, so the cap bends them
    batches = random_batches(300, rows=4, width=24, n=2)
    expected = full_logits_loss(model, batches)
    assert evaluate_loss(model, batches) == pytest.approx(expected, rel=1e-6)
    model.config.final_logit_softcapping = None  # the loss the raw head would give: far off
    assert abs(full_logits_loss(model, batches) - expected) > 1e-2


def test_unknown_logit_post_processing_falls_back_to_full_logits(capsys):
    """A model that does something to its logits after lm_head that evaluation.py does not know is
    caught by the check against the model's own last-position logits, and scored from full logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    class ShiftedLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3.0 + torch.arange(out.logits.size(-1)) / 50
            return out

    torch.manual_seed(0)
    model = ShiftedLlama(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1)).eval()
    batches = random_batches(300, rows=4, width=24, n=2)
    assert evaluate_loss(model, batches) == pytest.approx(full_logits_loss(model, batches), rel=1e-6)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ShiftedLlama's logits"), err
    evaluation._FULL_LOGITS.discard("ShiftedLlama")


class TensorMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the tensors ops create inside the block (views and in-place results of tensors that
    already exist are not new memory): the peak of those alive at once, and the largest one."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [bytes, tensors using it]
        self.now = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
                continue
            key = t.untyped_storage().data_ptr()
            if key in inputs and key not in self.live:
                continue
            entry = self.live.setdefault(key, [t.untyped_storage().nbytes(), 0])
            if entry[1] == 0:
                self.now += entry[0]
                self.peak, self.largest = max(self.peak, self.now), max(self.largest, entry[0])
            entry[1] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key):
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]


def test_eval_peak_memory_stays_far_below_full_logits(monkeypatch):
    """8 rows x 128 tokens x a 32,768-word vocabulary: the whole batch's fp32 logits are 128 MiB, and
    the old loss held about three such tensors at once. Chunked (8 tokens a chunk here), eval's
    tensors peak below 1/16 of one."""
    from transformers import LlamaConfig

    vocab, rows, width = 32_768, 8, 128
    model = random_decoder(LlamaConfig, vocab_size=vocab)
    batches = random_batches(vocab, rows, width)
    full_bytes = rows * width * vocab * 4
    monkeypatch.setattr(evaluation, "LOGITS_PER_CHUNK", 8 * vocab)

    with TensorMemory() as before:
        expected = full_logits_loss(model, batches)
    with TensorMemory() as after:
        loss = evaluate_loss(model, batches)
    print(f"\n[eval memory] full logits {full_bytes / 2**20:.0f} MiB; peak of tensors alive: "
          f"full-logits loss {before.peak / 2**20:.1f} MiB, chunked {after.peak / 2**20:.2f} MiB; "
          f"largest tensor {before.largest / 2**20:.1f} -> {after.largest / 2**20:.2f} MiB")
    assert loss == pytest.approx(expected, rel=1e-6)
    assert before.largest >= full_bytes and before.peak >= 2 * full_bytes  # the probe sees the old cost
    assert after.peak < full_bytes / 16 and after.largest <= 2 * 8 * vocab * 4


def test_label_logprobs_equal_the_full_log_softmax(assets):
    model, tok, _ = trial_model(assets, "llama", "none")
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, tok.vocab_size, (n,), generator=gen).tolist() for n in (3, 9, 5, 12, 7)]
    options = [[11, 12], [13], [14, 15, 16]]
    expected = full_logits_label_logprobs(model, prompts, options, tok.pad_token_id)
    got = label_logprobs(model, prompts, options, tok.pad_token_id, batch_size=2)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sharing eval out by rank


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("per_call", [1, 2, 3, 8])
def test_shard_calls_gives_every_rank_the_same_number_of_forward_calls(world, per_call):
    for n in range(0, 20):
        plans = [shard_calls(n, per_call, (rank, world)) for rank in range(world)]
        assert len({len(p) for p in plans}) == 1, (n, plans)  # the same number of calls on every rank
        assert len(plans[0]) == math.ceil(math.ceil(n / world) / per_call)
        kept = sorted(i for p in plans for idx, keep in p if keep for i in idx)
        assert kept == list(range(n))  # every item counted once
        for rank, plan in enumerate(plans):
            for idx, keep in plan:
                assert 1 <= len(idx) <= per_call and all(0 <= i < n for i in idx)
                if keep:
                    assert all(i % world == rank for i in idx)  # round-robin, as before
            assert [keep for _, keep in plan] == sorted((keep for _, keep in plan), reverse=True)


def test_sharded_eval_sums_to_the_whole(assets, monkeypatch):
    """Five batches over 2, 3 and 4 ranks: each rank's all-reduced sums (its batches, padding calls
    dropped) add up to the single-rank loss, and every rank made the same number of forwards."""
    model, tok, prepared = trial_model(assets, "llama", "none")
    monkeypatch.setattr(evaluation, "EVAL_BATCH_SIZE", 3)
    batches = eval_batches(prepared.eval.examples, tok.pad_token_id)[:5]
    assert len(batches) == 5
    whole = evaluate_loss(model, batches)
    sums: list[list[float]] = []
    monkeypatch.setattr(evaluation, "all_reduce_sum", lambda values: sums.append(values) or values)
    forwards = []
    for world_size in (2, 3, 4):
        sums.clear()
        for rank in range(world_size):
            calls = []
            handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
            evaluate_loss(model, batches, (rank, world_size))
            handle.remove()
            forwards.append(len(calls))
        loss_sum, count = (sum(col) for col in zip(*sums))
        assert loss_sum / count == pytest.approx(whole, rel=1e-9)
        assert len(set(forwards[-world_size:])) == 1, forwards


def test_sharded_label_scoring_and_generation_cover_every_prompt(assets):
    """Five prompts over 2 and 3 ranks: the ranks' scores, in rank order, are the single-rank scores
    dealt round-robin, and a rank with no prompt of its own still makes the generate call."""
    model, tok, _ = trial_model(assets, "llama", "none")
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(5, tok.vocab_size, (n,), generator=gen).tolist() for n in (4, 6, 5, 8, 3)]
    options = [[11], [12, 13]]
    whole = label_logprobs(model, prompts, options, tok.pad_token_id, batch_size=2)
    for world_size in (2, 3):
        for rank in range(world_size):
            mine = label_logprobs(model, prompts, options, tok.pad_token_id, (rank, world_size), batch_size=2)
            assert torch.allclose(torch.tensor(mine), torch.tensor(whole[rank::world_size]), atol=1e-5)
    calls = []
    model.generate = lambda **kw: (calls.append(kw["input_ids"].shape[0]), kw["input_ids"])[1]
    answers = [evaluation.generate_answers(model, tok, prompts[:1], 2, (rank, 3)) for rank in range(3)]
    assert [len(a) for a in answers] == [1, 0, 0] and calls == [1, 1, 1]
