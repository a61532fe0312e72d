"""Any chat model x your own chat data: chat SFT with LoRA, sized for a small model on one GPU.

    # 4 trials of a tiny Llama on a generated Alpaca-format sample; CPU, no Hub, about a minute (its tiny model is built once, first)
    python sweeps/chat_sft.py --preset smoke

    # your chat model, your file: ShareGPT `conversations`, OpenAI `messages` or Alpaca `instruction`/`output` rows
    python sweeps/chat_sft.py --model HuggingFaceTB/SmolLM2-360M-Instruct --dataset data/chats.jsonl

    # the example file (400 support chats, ~25k tokens): shorter rows, smaller steps, ~4 epochs per trial
    python sweeps/chat_sft.py --model HuggingFaceTB/SmolLM2-360M-Instruct --dataset examples/data/support_chats.jsonl \\
        --max-seq-length 512 --gradient-accumulation-steps 1 --max-tokens 100000

    # on a `ray up cluster.yaml` cluster: a 7B in 4-bit, 2 GPUs per trial (DDP), Alpaca rows from the Hub, S3 results
    python sweeps/chat_sft.py --address auto --autoscale --workers-per-trial 2 --model Qwen/Qwen2.5-7B-Instruct \\
        --quantization 4bit --dataset yahma/alpaca-cleaned --storage-path s3://bucket/sweeps

Choices of the recipe: no model and no dataset of its own (the sweep is named after the dataset);
the family comes from the checkpoint's config (Llama, SmolLM, Mistral, Gemma, Qwen2, Phi-3), the
schema from the rows (trainers/chat.py). Loss only on assistant turns, rendered with the model's
own chat template; LoRA on every linear projection of a bf16 base (no quantization: a 0.5B-1.5B
model fits whole); packing searched; budget and ASHA rungs in training tokens; the flagship's space.
"""

from pathlib import Path

from lorasweep.recipe import Preset, Recipe
from search_spaces.lora_sft import LORA_SFT
from sweeps.llama_finetome import RECIPE as FLAGSHIP

FLAGSHIP_SMOKE = FLAGSHIP.presets["smoke"]


def smoke_assets(cache: Path) -> dict:
    """An Alpaca-format sample (1,200 generated instruction/input/output rows, 2 in 5 with an input)
    and a tiny Llama (tokenizer trained on that sample, briefly pretrained on its text): built once,
    then cached. Alpaca rather than the flagship's ShareGPT, so this path is run end to end too."""
    from stand_ins import alpaca_rows, alpaca_texts, offline_assets

    rows = alpaca_rows(1200, seed=0)
    return offline_assets(cache, "llama", rows, alpaca_texts(rows), "alpaca_sample.jsonl")


RECIPE = Recipe(
    name="chat_sft",
    dataset="",  # --dataset: a .jsonl/.json/.parquet file or a Hub id
    search_space=LORA_SFT,
    doc=__doc__,
    settings={
        # SmolLM2-360M to Qwen2.5-1.5B in bf16: 0.7-3 GB of weights, so no 4-bit (dequantising every
        # matmul costs ~30% speed); --quantization 4bit for a 7B. 2 x 2048-token rows x 4 accumulation
        # = 16k tokens per optimizer step packed (3.2k unpacked, for 400-token chats), so a 2M-token
        # trial is ~120 steps packed, ~620 unpacked: minutes on one GPU for a 0.5B model.
        "task": "chat_sft",
        "quantization": "none",
        "max_seq_length": 2048,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 4,
        "max_tokens": 2_000_000,
        "eval_every": 20,
        # 5% of a user's file, at most 256 rows: 20 eval chats out of 400, 256 out of 10k+.
        "eval_fraction": 0.05,
        "eval_rows": 256,
        # LoRA's optimizer state is a few MB: ZeRO would shard nothing worth the cost; with
        # --workers-per-trial 2 the workers run plain DDP (--zero-stage 2 for a full fine-tune).
        "zero_stage": 0,
    },
    presets={
        "real": Preset("your chat model (--model) on your chat data (--dataset), 16 trials, one GPU or more",
                       sweep={"num_samples": 16, "max_concurrent": 4}),
        "smoke": Preset(
            "tiny Llama on a generated Alpaca-format sample, 4 trials, CPU, about a minute",
            # The flagship's smoke sizing, kept in step with it: 8 rows x ~40 tokens (unpacked) or
            # 8 x ~250 (packed) per step; 60k tokens is ~1.4 epochs of this sample's 44k: ~190 steps
            # unpacked, ~30 packed. Four trials instead of six.
            settings=dict(FLAGSHIP_SMOKE.settings),
            sweep={**FLAGSHIP_SMOKE.sweep, "num_samples": 4},
            assets=smoke_assets,
        ),
    },
)

if __name__ == "__main__":
    from lorasweep.engine import main  # the driver; importing the recipe needs only declarations

    raise SystemExit(main(RECIPE))
