"""Tiny offline stand-ins for Hub checkpoints: a family's real architecture built from its config,
random weights, briefly pretrained, and a tokenizer trained on the project's own sample text.

The smoke presets write one of these to a local folder and then point ``--model`` at it, so the
trial code path is exactly the real one (``AutoTokenizer/AutoModel*.from_pretrained(path)``).
"""

from __future__ import annotations

import fcntl
import json
import random
from pathlib import Path

from trainers.families import Family, TinyTokenizer

VERSION = 6  # of how tiny models are built: a cached folder of another version is rebuilt


def train_tokenizer(texts: list[str], vocab_size: int, spec: TinyTokenizer):
    """A byte-level BPE (decoders, RoBERTa, T5 stand-in) or lower-cased WordPiece (BERT, DistilBERT)
    tokenizer with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = dict(spec.specials)
    extra = sp.pop("extra", [])
    special_tokens = list(dict.fromkeys([*sp.values(), *extra]))
    if spec.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=sp["unk_token"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # any Unicode stays encodable
    tok.train_from_iterator(texts, trainer=trainer)
    if "cls_token" in sp:  # encoders: [CLS] text [SEP], as their real tokenizers add
        cls, sep = sp["cls_token"], sp["sep_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    elif spec.append_eos:
        eos = sp["eos_token"]
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
                                                           special_tokens=[(eos, tok.token_to_id(eos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=extra or None, **sp)
    if fast.pad_token is None:
        fast.pad_token = fast.eos_token
    if spec.chat_template:
        fast.chat_template = spec.chat_template
    return fast


def pretrain(model, tokenizer, texts: list[str], steps: int, kind: str, seq: int = 64, batch: int = 16,
             lr: float = 3e-3):
    """A few hundred full-parameter steps on the sample's text (causal LM; masked LM for encoders;
    denoising copy for encoder-decoders, T5's own pretraining being span denoising), so the base
    knows the words like a real base model and the fine-tune has to learn the task.
    ~10 s on 2 CPU cores."""
    import torch

    # Each text opens with bos (or the encoder's [CLS]/[SEP]) and closes with eos, so those special
    # tokens get trained embeddings as in a real base model. With an untrained eos (a random row of
    # a tied embedding matrix) a fine-tune cannot learn to end its answer: its logit stays tiny.
    start = next(t for t in (tokenizer.bos_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id) if t is not None)
    end = next(t for t in (tokenizer.eos_token_id, tokenizer.sep_token_id) if t is not None)
    ids = []
    for t in texts:
        ids += [start, *tokenizer(t, add_special_tokens=False)["input_ids"], end]
    if kind == "decoder" and tokenizer.chat_template:
        # Also the texts as chat turns, each asked text answered by a random other one (so no task is
        # taught: consecutive texts can be a question and its answer), so the template's role headers
        # are tokens the model has read, as an instruct model has. Without that a LoRA fine-tune can
        # barely route information through the header tokens between a prompt and its answer: their
        # embeddings would be untrained noise.
        replies = random.Random(0).sample(texts, len(texts))
        for a, b in zip(texts[::2], replies[::2]):
            chat = [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
            ids += tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        if kind == "encoder-decoder":  # copy the text through a noisy channel: 15% of input tokens random
            noisy = x.masked_scatter(torch.rand(x.shape, generator=gen) < 0.15,
                                     torch.randint(len(tokenizer), x.shape, generator=gen))
            loss = model(input_ids=noisy, labels=x).loss
        elif kind == "encoder":  # BERT's recipe: 15% of positions predicted, their inputs masked
            labels = x.clone()
            chosen = torch.rand(x.shape, generator=gen) < 0.15
            labels[~chosen] = -100
            x = x.masked_fill(chosen, tokenizer.mask_token_id)
            loss = model(input_ids=x, labels=labels).loss
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss.detach())


def write_tiny_model(out_dir: str | Path, family: Family, texts: list[str], seed: int = 0, vocab_size: int = 512,
                     pretrain_steps: int = 300) -> Path:
    """Build (once) a tiny checkpoint folder of ``family``'s architecture. Written to a temp sibling
    and renamed, so a crash never leaves a folder that looks complete; an existing one is reused."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars: noise on a one-line-error path

    out = Path(out_dir)
    if _cached(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two sweeps (or test workers) building the same model at once: one builds, the other waits and
    # reuses it, never replacing a folder the first may be reading.
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _cached(out):
            return out
        return _build(out, family, texts, seed, vocab_size, pretrain_steps)


def _cached(out: Path) -> bool:
    marker = out / "lorasweep_tiny.json"
    return (out / "config.json").exists() and marker.exists() and json.loads(marker.read_text()).get("version") == VERSION


def _build(out: Path, family: Family, texts: list[str], seed: int, vocab_size: int, pretrain_steps: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    from trainers.model import save_folder

    tokenizer = train_tokenizer(texts, vocab_size, family.tiny_tokenizer)
    config = family.tiny_config(tokenizer)
    torch.manual_seed(seed)
    # An encoder ships as its masked-LM checkpoint (like distilbert-base-uncased); the task's
    # Auto class adds its own head when the trial loads it.
    auto = {"decoder": AutoModelForCausalLM, "encoder": AutoModelForMaskedLM,
            "encoder-decoder": AutoModelForSeq2SeqLM}[family.kind]
    model = auto.from_config(config)
    lm_loss = None
    if pretrain_steps:
        lm_loss = pretrain(model, tokenizer, texts, pretrain_steps, family.kind)
    return save_folder(out, model, tokenizer, "lorasweep_tiny.json",
                       {"version": VERSION, "family": family.name, "architecture": type(model).__name__,
                        "parameters": model.num_parameters(), "seed": seed, "pretrain_steps": pretrain_steps,
                        "pretrain_loss": lm_loss})

