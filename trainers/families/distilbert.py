"""DistilBERT: its linear layers are q_lin/k_lin/v_lin/out_lin/lin1/lin2, and the classification head
is pre_classifier + classifier (PEFT's SEQ_CLS default saves only `classifier`)."""

from trainers.families import Family, TinyTokenizer, register

WORDPIECE = TinyTokenizer(kind="wordpiece", specials={"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                                                      "sep_token": "[SEP]", "mask_token": "[MASK]"})


def tiny_config(tokenizer):
    from transformers import DistilBertConfig

    # No dropout: at this size DistilBERT's 10-20% dropout is noise the tiny model cannot learn through.
    # 128 dimensions, not 64: at 64 even a full fine-tune stayed near chance on the smoke sample for
    # 300k tokens (0.66 eval accuracy); at 128 it reaches ~0.8 (measured, lr 3e-4..1e-3).
    return DistilBertConfig(vocab_size=len(tokenizer), dim=128, hidden_dim=512, n_layers=2, n_heads=4,
                            max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                            dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)


DISTILBERT = register(Family(name="distilbert", model_types=("distilbert",), kind="encoder", tiny_config=tiny_config,
                             tiny_tokenizer=WORDPIECE, target_modules=("q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"),
                             head_modules=("pre_classifier", "classifier")))
