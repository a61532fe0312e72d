"""Qwen2 / Qwen2.5: ChatML format; q/k/v projections carry bias terms (see trainers/model.py on
what that means for 4-bit training on the CPU)."""

from trainers.families import Family, TinyTokenizer, register

CHATML = TinyTokenizer(
    specials={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "extra": ["<|im_start|>"]},
    chat_template=(
        "{% for message in messages %}"
        "{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
)


def tiny_config(tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                       tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)


QWEN2 = register(Family(name="qwen2", model_types=("qwen2",), kind="decoder", tiny_config=tiny_config,
                        tiny_tokenizer=CHATML))
