"""Llama family (Llama 3.x Instruct and any Llama-architecture chat model, e.g. SmolLM2)."""

from transformers import LlamaConfig

from trainers.causal_lm import audit_data, check_settings, train_func
from trainers.registry import ModelFamily, register


def tiny_config(tokenizer) -> LlamaConfig:
    # ~0.2M parameters: 2 layers, GQA with 4 query / 2 KV heads like Llama 3's 32/8.
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


LLAMA = register(ModelFamily(
    name="llama",
    train_func=train_func,
    tiny_config=tiny_config,
    default_model="unsloth/Llama-3.2-1B-Instruct",
    description="Llama 3.x chat SFT (QLoRA by default)",
    check_settings=check_settings,
    audit_data=audit_data,
))
