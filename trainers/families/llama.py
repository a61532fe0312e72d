"""Llama: Llama 2/3.x, and every Llama-architecture checkpoint (SmolLM/SmolLM2, TinyLlama, ...)."""

from trainers.families import Family, TinyTokenizer, register

# Llama-3's special tokens and chat format (without the date header of the 3.1+ template), so the
# tiny model exercises the same role headers and <|eot_id|> end-of-turn as the real one.
LLAMA3_CHAT = TinyTokenizer(
    specials={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|finetune_right_pad_id|>",
              "extra": ["<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]},
    chat_template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
)


def tiny_config(tokenizer):
    from transformers import LlamaConfig

    # ~0.2M parameters: 2 layers, GQA with 4 query / 2 KV heads like Llama 3's 32/8.
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


LLAMA = register(Family(name="llama", model_types=("llama",), kind="decoder", tiny_config=tiny_config,
                        tiny_tokenizer=LLAMA3_CHAT))
