"""Tiny offline stand-ins for Hub checkpoints: a real architecture built from its config, random
weights, and a byte-level BPE tokenizer trained on the project's own sample text.

The smoke presets write one of these to a local folder and then point ``--model`` at it, so the
trial code path is exactly the real one (``AutoTokenizer/AutoModel.from_pretrained(path)``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Llama-3's special tokens and chat format (without the date header of the 3.1+ template), so the
# tiny model exercises the same role headers and <|eot_id|> end-of-turn as the real one.
LLAMA3_SPECIALS = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "pad_token": "<|finetune_right_pad_id|>",
    "extra": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"],
}
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int, specials: dict, chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = [specials["bos_token"], specials["eos_token"], specials["pad_token"], *specials["extra"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any Unicode input stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=specials["bos_token"],
        eos_token=specials["eos_token"],
        pad_token=specials["pad_token"],
        additional_special_tokens=specials["extra"],
    )
    fast.chat_template = chat_template
    return fast


def pretrain(model, tokenizer, texts: list[str], steps: int, seq: int = 64, batch: int = 16, lr: float = 3e-3):
    """A few hundred full-parameter steps of plain language modelling on the sample's text, so the
    base knows the words (like a real base model) and LoRA has to learn the chat format and the
    answers (like a real SFT). ~10 s on 2 CPU cores."""
    import torch

    ids = []
    for t in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids[: len(ids) // seq * seq]).view(-1, seq)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss)


def write_tiny_causal_lm(out_dir: str | Path, texts: list[str], make_config, seed: int = 0,
                         vocab_size: int = 512, pretrain_steps: int = 300) -> Path:
    """Build (once) a tiny causal LM folder. ``make_config(tokenizer)`` returns the architecture's
    config. Written to a temp sibling and renamed, so a crash never leaves a folder that looks
    complete; an existing folder is reused as is."""
    import torch
    from transformers import AutoModelForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "lorasweep_tiny.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        tokenizer = train_tokenizer(texts, vocab_size, LLAMA3_SPECIALS, LLAMA3_CHAT_TEMPLATE)
        config = make_config(tokenizer)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
        lm_loss = pretrain(model, tokenizer, texts, pretrain_steps) if pretrain_steps else None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lorasweep_tiny.json").write_text(json.dumps(
            {"architecture": type(model).__name__, "parameters": model.num_parameters(), "seed": seed,
             "pretrain_steps": pretrain_steps, "pretrain_loss": lm_loss}
        ))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
