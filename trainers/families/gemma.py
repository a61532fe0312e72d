"""Gemma and Gemma-2: <start_of_turn> chat format with a 'model' role and no system role.

Gemma-2 soft-caps its attention logits, which SDPA cannot do: Transformers recommends eager
attention for training it, so that is the quirk this family carries."""

from trainers.families import Family, TinyTokenizer, register

GEMMA_CHAT = TinyTokenizer(
    specials={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
              "extra": ["<start_of_turn>", "<end_of_turn>"]},
    chat_template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
)


def _tiny(config_cls, tokenizer, **extra):
    return config_cls(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, **extra)


def tiny_gemma(tokenizer):
    from transformers import GemmaConfig

    return _tiny(GemmaConfig, tokenizer)


def tiny_gemma2(tokenizer):
    from transformers import Gemma2Config

    return _tiny(Gemma2Config, tokenizer, sliding_window=256)


GEMMA = register(Family(name="gemma", model_types=("gemma",), kind="decoder", tiny_config=tiny_gemma,
                        tiny_tokenizer=GEMMA_CHAT))
GEMMA2 = register(Family(name="gemma2", model_types=("gemma2",), kind="decoder", tiny_config=tiny_gemma2,
                         tiny_tokenizer=GEMMA_CHAT,
                         from_pretrained_kwargs={"attn_implementation": "eager"}))
