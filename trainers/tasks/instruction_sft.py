"""Instruction tuning on instruction/response rows (Dolly, Alpaca-style): the prompt (e.g.
"{instruction}") is the user's turn, ``target_column`` the reply; the loss is on the reply only.

Scored as the Dolly projects score it: eval loss and perplexity (e^loss, per token of the replies);
no text metric, since an open instruction has no single right answer. The baseline keeps each test
example's loss (their distributions, base against tuned) and sample generations side by side.
"""

from __future__ import annotations

from trainers.generation import DecoderGeneration, perplexity
from trainers.tasks import register


class InstructionSFT(DecoderGeneration):
    name = "instruction_sft"
    objective = "eval_loss"
    loss_metrics = ("eval_loss", "perplexity")
    takes_shots = False

    def _loss_metrics(self, loss):
        return {"eval_loss": loss, "perplexity": perplexity(loss)}


INSTRUCTION_SFT = register(InstructionSFT())
