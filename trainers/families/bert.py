"""BERT and RoBERTa (and MiniLM, which is BERT): attention in query/key/value, the rest in `*.dense`.

`all-linear` would also put adapters on the pooler and the classification head; the head (and
BERT's pooler, which sentence-embedding checkpoints such as all-MiniLM ship untrained) is trained
in full instead."""

from trainers.families import Family, TinyTokenizer, register
from trainers.families.distilbert import WORDPIECE

_TARGETS = ("query", "key", "value", "output.dense", "intermediate.dense")

ROBERTA_BPE = TinyTokenizer(kind="bpe", specials={"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                                                  "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>",
                                                  "mask_token": "<mask>"})


def tiny_bert(tokenizer):
    from transformers import BertConfig

    return BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=192, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_roberta(tokenizer):
    from transformers import RobertaConfig

    return RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=192, max_position_embeddings=514, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# "bert.pooler", not "pooler": the names also go to Transformers' llm_int8_skip_modules, which
# matches from the start of a module's name or at its end, never in the middle ("bert.pooler.dense");
# a bare "pooler" left the pooler quantised, and PEFT's trained copy of it failed at the first step.
BERT = register(Family(name="bert", model_types=("bert",), kind="encoder", tiny_config=tiny_bert,
                       tiny_tokenizer=WORDPIECE, target_modules=_TARGETS, head_modules=("classifier", "bert.pooler")))
ROBERTA = register(Family(name="roberta", model_types=("roberta", "xlm-roberta"), kind="encoder",
                          tiny_config=tiny_roberta, tiny_tokenizer=ROBERTA_BPE, target_modules=_TARGETS,
                          head_modules=("classifier",)))
