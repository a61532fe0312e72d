"""Mistral (7B v0.1-v0.3 and Instruct): Llama-like, sliding-window attention, [INST] chat format."""

from trainers.families import Family, TinyTokenizer, register

# Mistral-Instruct's format: no system role, user turns in [INST] ... [/INST], replies end with </s>.
MISTRAL_CHAT = TinyTokenizer(
    specials={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "extra": ["[INST]", "[/INST]"]},
    chat_template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
)


def tiny_config(tokenizer):
    from transformers import MistralConfig

    return MistralConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         sliding_window=512, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)


MISTRAL = register(Family(name="mistral", model_types=("mistral",), kind="decoder", tiny_config=tiny_config,
                          tiny_tokenizer=MISTRAL_CHAT))
