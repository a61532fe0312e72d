"""Every family trains as a trial trains it, in every quantisation, and is found from its checkpoint.

The grid is PEFT's model x config grid on our own families: a tiny checkpoint of each family's real
architecture (random weights, no pretraining: only the code path matters here), loaded with
``build_model`` in 4-bit, 8-bit and full precision, then exactly a trial's sequence on the CPU:
a training step, an eval (eval mode + no_grad), and a second training step. That order is the
regression test for a user's crash: Qwen2 (bias on q/k/v) in 4-bit failed at the step after the
first eval, in bitsandbytes' CPU inference path (see ``keep_quantized_bases_out_of_cpu_inference_paths``).
"""

from __future__ import annotations

import dataclasses

import math
import re

import pytest
import torch

from common.errors import ConfigError
from stand_ins import conversation_texts, finetome_rows, imdb_rows, sentiment_texts, write_jsonl
from trainers.config import TrainSettings
from trainers.families import family_for, get_family, resolve_family
from trainers.model import build_model, load_base_model, quantization_config
from trainers.tasks import get_task

DECODERS = ("llama", "mistral", "gemma", "gemma2", "qwen2", "phi3")
ENCODERS = ("distilbert", "bert", "roberta")
FAMILIES = (*DECODERS, *ENCODERS, "t5")
QUANTIZATIONS = ("4bit", "8bit", "none")
LABELS = ("negative", "positive")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices of 64 x 192 gain nothing from a second thread, and on a busy 2-core machine (another
    test run beside this one) torch's threads wait on each other: the grid took 195 s with 2, 19 s with 1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Data files, and a ``tiny(family)`` that builds that family's checkpoint folder on first use
    (once per module; ``-k qwen2`` builds only Qwen2's)."""
    from stand_ins.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("families")
    chats, reviews = finetome_rows(40), imdb_rows(40)
    # Decoders also see the review text, so the decoder-with-a-head case tokenises it into words.
    texts = {"decoder": conversation_texts(chats) + sentiment_texts(reviews, "text"),
             "encoder": sentiment_texts(reviews, "text"),
             "encoder-decoder": conversation_texts(chats)}
    built: dict[str, str] = {}

    def tiny(name: str) -> str:
        if name not in built:
            fam = get_family(name)
            built[name] = str(write_tiny_model(root / f"tiny-{name}", fam, texts[fam.kind], pretrain_steps=0))
        return built[name]

    return {"tiny": tiny, "chat": str(write_jsonl(chats, root / "finetome.jsonl")),
            "imdb": str(write_jsonl(reviews, root / "imdb.jsonl")), "root": root}


def _settings(assets, family: str, task: str, quantization: str) -> TrainSettings:
    extra = {} if task == "chat_sft" else {"labels": LABELS, "text_column": "text", "label_column": "label"}
    return TrainSettings(model=assets["tiny"](family), dataset=assets["chat" if task == "chat_sft" else "imdb"],
                         task=task, quantization=quantization, gradient_checkpointing=quantization != "none",
                         zero_stage=0, max_seq_length=128, eval_fraction=0.2, precision="fp32",
                         learning_rate=1e-3, r=8, lora_alpha=16, seed=0, **extra).validate()


def _step(model, collate, examples, opt) -> float:
    batch = collate(examples)
    batch.pop("num_tokens")
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


GRID = [(f, "chat_sft") for f in DECODERS] + [(f, "classification") for f in ENCODERS] + [("llama", "classification")]


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
@pytest.mark.parametrize("family,task_name", GRID, ids=[f"{f}-{t}" for f, t in GRID])
def test_train_eval_train_like_a_trial(assets, family, task_name, quantization):
    import bitsandbytes as bnb

    settings = _settings(assets, family, task_name, quantization)
    fam, task = get_family(family), get_task(task_name)
    task.check(settings, fam)
    tok = task.load_tokenizer(settings)
    prepared = task.prepare(settings, tok)
    model = build_model(settings, fam, task, "fp32", torch.device("cpu"))

    quantized = {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}
    assert bool(quantized) == (quantization != "none")
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in quantized.values())
    heads = task.head_modules(fam)  # trained in full, so never quantised (nor PEFT's copy of them)
    assert not [n for n in quantized if any(h in n for h in heads)]

    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    if task_name == "classification":  # the head is trained in full, beside the adapters
        heads = [n for n in trainable if "modules_to_save" in n]
        assert heads and all(any(h in n for h in fam.head_modules) for n in heads)
    # No weight decay: a parameter moves only if a gradient reached it. LoRA's B starts at zero, so
    # its A gets a gradient only at the second step: every one changing proves both steps trained.
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    examples = task.train_examples(settings, prepared)
    collate = task.collator(settings, tok)
    assert len(examples) >= 8

    model.train()
    first = _step(model, collate, examples[:4], opt)
    metrics = task.evaluate(model, tok, settings, prepared)
    model.train()
    second = _step(model, collate, examples[4:8], opt)

    assert math.isfinite(first) and math.isfinite(second)
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    if task_name == "classification":
        assert {"accuracy", "f1"} <= metrics.keys()
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("accuracy", "precision", "recall", "f1"))
    unchanged = [n for n, p in model.named_parameters() if n in trainable and torch.equal(p.detach(), trainable[n])]
    assert not unchanged, f"{len(unchanged)}/{len(trainable)} trainable parameters did not train, e.g. {unchanged[:3]}"


# ----------------------------------------------------------------------------- finding the family


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tiny_checkpoint_is_found_as_its_family(assets, name):
    from transformers import AutoConfig

    folder = assets["tiny"](name)
    assert family_for(AutoConfig.from_pretrained(folder).model_type).name == name
    assert resolve_family(TrainSettings(model=folder)).name == name


def test_a_smollm_checkpoint_is_llama(assets, capsys):
    from transformers import LlamaConfig

    # SmolLM2-135M's shape (saved config only): a Llama-architecture model under another name.
    folder = assets["root"] / "SmolLM2-135M"
    LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True).save_pretrained(folder)
    assert resolve_family(TrainSettings(model=str(folder))).name == "llama"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("model_type", ["gpt_neox", "olmo"])
def test_an_unclaimed_model_type_trains_as_a_generic_decoder_with_one_warning(model_type, capsys):
    fam = family_for(model_type)
    assert (fam.name, fam.kind, fam.generic, fam.target_modules) == (model_type, "decoder", True, None)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and repr(model_type) in err[0]


def test_a_model_type_transformers_does_not_know_is_refused():
    with pytest.raises(ConfigError, match="'no_such_arch'") as e:
        family_for("no_such_arch")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("task_name,family,kind", [("chat_sft", "distilbert", "encoder"),
                                                   ("classification", "t5", "encoder-decoder"),
                                                   ("instruct_classification", "bert", "encoder")])
def test_a_task_refuses_a_family_of_the_wrong_kind(task_name, family, kind):
    settings = TrainSettings(model="some/checkpoint", dataset="d.jsonl", labels=LABELS)
    with pytest.raises(ConfigError) as e:
        get_task(task_name).check(settings, get_family(family))
    msg = str(e.value)
    assert "\n" not in msg and f"`{task_name}`" in msg
    assert re.search(rf"(?<![\w-]){kind}(?![\w-])", msg), msg  # "encoder" must not pass for "encoder-decoder"


# ----------------------------------------------------------------------------- bitsandbytes' CPU path


def test_the_loader_keeps_4bit_layers_off_the_avx512bf16_cpu_path(assets, monkeypatch):
    """bitsandbytes sets ``support_avx512bf16_for_cpu`` on each Linear4bit from a CPUID probe; on a CPU
    that has AVX512-BF16 an eval then repacks the weights for an inference-only kernel. Pretend this
    CPU has it; our loader must clear the flag, a plain ``from_pretrained`` (the control) must not."""
    import bitsandbytes as bnb
    import bitsandbytes.nn.modules as bnb_modules
    from transformers import AutoModelForCausalLM

    from trainers.model import keep_quantized_bases_out_of_cpu_inference_paths

    # Linear4bit.__init__ calls the name imported into bitsandbytes.nn.modules, not functional's.
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    settings = _settings(assets, "qwen2", "chat_sft", "4bit")

    def flags(model):
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers
        return {bool(m.support_avx512bf16_for_cpu) for m in layers}

    ours = load_base_model(settings, get_family("qwen2"), get_task("chat_sft"), "fp32", torch.device("cpu"))
    assert flags(ours) == {False}

    plain = AutoModelForCausalLM.from_pretrained(settings.model, dtype=torch.float32, device_map={"": "cpu"},
                                                 quantization_config=quantization_config(settings, torch.float32))
    assert flags(plain) == {True}
    n = sum(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())
    assert keep_quantized_bases_out_of_cpu_inference_paths(plain) == n
    assert flags(plain) == {False}


@pytest.mark.parametrize("family,asked,expected", [
    ("llama", "auto", "sdpa"), ("llama", "eager", "eager"), ("gemma2", "auto", "eager"), ("gemma", "sdpa", "sdpa")])
def test_attn_implementation_reaches_the_model_and_auto_keeps_the_familys(assets, family, asked, expected):
    settings = dataclasses.replace(_settings(assets, family, "chat_sft", "none"), attn_implementation=asked)
    model = load_base_model(settings, get_family(family), get_task("chat_sft"), "fp32", torch.device("cpu"))
    assert model.config._attn_implementation == expected


def test_an_attention_the_architecture_lacks_is_refused_before_the_sweep(assets):
    """Gemma-2 has no sdpa in Transformers 5.23: each trial's from_pretrained raised a ValueError."""
    from transformers import AutoConfig

    from lorasweep.preflight import check_attention_support

    settings = dataclasses.replace(_settings(assets, "gemma2", "chat_sft", "none"), attn_implementation="sdpa")
    config = AutoConfig.from_pretrained(settings.model)
    with pytest.raises(ConfigError, match=r"^`attn_implementation` sdpa: Gemma2ForCausalLM \(gemma2\) does not have it "
                                          r"in Transformers 5\.\d+\.\d+; pass --attn-implementation eager \(or auto\)$"):
        check_attention_support(settings, get_task("chat_sft"), config)
    check_attention_support(dataclasses.replace(settings, attn_implementation="eager"), get_task("chat_sft"), config)
    llama = dataclasses.replace(_settings(assets, "llama", "chat_sft", "none"), attn_implementation="sdpa")
    check_attention_support(llama, get_task("chat_sft"), AutoConfig.from_pretrained(llama.model))


def test_flash_attention_on_a_machine_without_cuda_stops_the_trial_with_one_line(assets):
    from common.errors import TrialError

    if torch.cuda.is_available():
        pytest.skip("CUDA is visible here")
    settings = dataclasses.replace(_settings(assets, "llama", "chat_sft", "none"), attn_implementation="flash_attention_2")
    with pytest.raises(TrialError, match=r"^`attn_implementation` flash_attention_2: it runs on CUDA GPUs only and "
                                         r"torch sees none here; pass --attn-implementation sdpa \(or auto\)$"):
        load_base_model(settings, get_family("llama"), get_task("chat_sft"), "bf16", torch.device("cpu"))


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_zero3_qlora_keeps_one_dtype_for_zero3_to_partition(assets, zero_stage):
    """A bf16 4-bit base as a GPU trial builds it (outside DeepSpeed here: loaded whole). At ZeRO-3 the
    4-bit weights are stored as bf16 and nothing is upcast beside them (TRL's sharded-QLoRA recipe);
    at stage 2 PEFT's prepare_model_for_kbit_training puts the norms in fp32, as it should there."""
    settings = dataclasses.replace(_settings(assets, "llama", "chat_sft", "4bit"), zero_stage=zero_stage,
                                   gradient_checkpointing=True)
    model = build_model(settings, get_family("llama"), get_task("chat_sft"), "bf16", torch.device("cpu"))
    base = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values()) and not any(p.requires_grad for p in base.values())
    norms = {p.dtype for n, p in base.items() if "norm" in n}
    if zero_stage == 3:
        assert {p.dtype for p in base.values()} == {torch.bfloat16}, {n: p.dtype for n, p in base.items()}
    else:
        assert norms == {torch.float32}
    assert model.base_model.model.is_gradient_checkpointing


def test_packed_trials_report_at_the_same_tokens_as_unpacked():
    from trainers.loop import report_interval

    # 1,000 examples packed into 480 rows: a report every 24 packed steps ~ 50 unpacked steps' tokens
    assert report_interval(50, 1000, 480) == 24
    assert report_interval(50, 1000, 1000) == 50
    assert report_interval(1, 1000, 100) == 1  # never 0


# ----------------------------------------------------------------------------- precision and DeepSpeed per worker


def test_precision_comes_from_the_device_the_worker_got(monkeypatch):
    """fp32 on a CPU worker even where the machine has a GPU; on a GPU, bf16 only where it is native
    (T4/V100 emulate it, far slower than fp16)."""
    from trainers.model import pick_precision

    s = TrainSettings(model="m", dataset="d.jsonl")
    asked = []
    native = {"value": True}

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return native["value"] or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_precision(s, torch.device("cpu")) == "fp32" and asked == []
    assert pick_precision(s, torch.device("cuda", 0)) == "bf16"
    native["value"] = False
    assert pick_precision(s, torch.device("cuda", 0)) == "fp16"
    # T5 overflows fp16: fp32 where the GPU has no native bf16; a decoder family still gets fp16
    assert pick_precision(s, torch.device("cuda", 0), get_family("t5")) == "fp32"
    assert pick_precision(s, torch.device("cuda", 0), get_family("llama")) == "fp16"
    assert asked == [False] * 4
    assert pick_precision(TrainSettings(model="m", dataset="d.jsonl", precision="bf16"), torch.device("cpu")) == "bf16"


def test_one_worker_trains_without_deepspeed_unless_deepspeed_still_does_something():
    from dataclasses import replace

    from trainers.config import for_workers

    s = TrainSettings(model="m", dataset="d.jsonl")
    for stage in (1, 2, 3):
        plain, note = for_workers(replace(s, zero_stage=stage), 1, "bf16")
        assert plain == replace(s, zero_stage=0)
        assert note.startswith("one worker: training without DeepSpeed") and f"ZeRO-{stage}" in note and "\n" not in note
    kept = [replace(s, zero_stage=2), 2, "bf16"], [replace(s, zero_stage=0), 1, "bf16"], \
        [replace(s, zero_stage=3, offload=True), 1, "bf16"], [replace(s, zero_stage=2, offload=True), 1, "fp16"], \
        [replace(s, zero_stage=2, method="full", quantization="none"), 1, "bf16"], \
        [replace(s, zero_stage=3, method="full", quantization="none"), 1, "fp16"]
    for settings, workers, precision in kept:  # more workers; DDP; offload; fp32 master weights of a full fine-tune
        assert for_workers(settings, workers, precision) == (settings, ""), (settings, workers, precision)
    full_fp32 = replace(s, zero_stage=2, method="full", quantization="none")
    assert for_workers(full_fp32, 1, "fp32")[0].zero_stage == 0


def test_a_one_worker_trial_builds_its_trainer_without_deepspeed(assets, tmp_path, capsys):
    """The llama_finetome real preset's ZeRO-2 with one worker per trial: setup says so once and hands
    the Trainer no DeepSpeed config."""
    from dataclasses import replace

    from trainers.config import TrialConfig
    from trainers.loop import setup

    settings = replace(_settings(assets, "llama", "chat_sft", "none"), zero_stage=2)
    st = setup(TrialConfig(settings), torch.device("cpu"), str(tmp_path))
    assert st.settings.zero_stage == 0 and st.args.deepspeed is None
    assert [line for line in capsys.readouterr().out.splitlines() if "DeepSpeed" in line] == [
        "[lorasweep] one worker: training without DeepSpeed (ZeRO-2 partitions across workers; with one it only "
        "adds overhead)"]
