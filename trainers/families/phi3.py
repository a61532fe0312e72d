"""Phi-3 / Phi-3.5: fused qkv_proj and gate_up_proj (all-linear covers them), <|user|> chat format."""

from trainers.families import Family, TinyTokenizer, register

PHI3_CHAT = TinyTokenizer(
    specials={"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
              "extra": ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]},
    chat_template=(
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
)


def tiny_config(tokenizer):
    from transformers import Phi3Config

    return Phi3Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      original_max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


PHI3 = register(Family(name="phi3", model_types=("phi3",), kind="decoder", tiny_config=tiny_config,
                       tiny_tokenizer=PHI3_CHAT))
