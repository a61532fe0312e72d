"""T5 / FLAN-T5: encoder-decoder (the seq2seq recipes train it; causal and encoder tasks refuse it)."""

from trainers.families import Family, TinyTokenizer, register

T5_SPECIALS = TinyTokenizer(specials={"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"},
                            append_eos=True)


def tiny_config(tokenizer):
    from transformers import T5Config

    return T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                    feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id)


T5 = register(Family(name="t5", model_types=("t5", "mt5"), kind="encoder-decoder", tiny_config=tiny_config,
                     tiny_tokenizer=T5_SPECIALS,
                     # T5's pretrained activations pass fp16's 65,504 (the known NaN losses): bf16 or fp32 only
                     fp16=False))
