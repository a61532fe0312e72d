"""Preference tuning (DPO, IPO, hinge, ORPO, KTO) of a chat model's LoRA adapter on (prompt, chosen,
rejected) pairs; the losses, formats and the reference model are trainers/preference.py's.

Scored on held-out pairs, every trial by the same measures whatever loss it trained with:
  reward_accuracy      share of pairs whose implicit reward (log pi/ref, summed over the reply) is
                       higher for the chosen reply: TRL's ``rewards/accuracies`` with the base model
                       as the reference (0.5 for the base itself: every margin is 0, a tie counts half)
  reward_margin        the mean of that reward margin, in nats (beta does not scale it: trials with
                       other betas compare)
  preference_accuracy  share of pairs where the model itself gives the chosen reply the higher
                       per-token log-likelihood: the base model's implicit preference, the baseline
  eval_loss            the trial's own loss on the eval pairs (its loss_type and beta: trials that
                       differ in those do not compare on it, so ASHA prunes on the objective)
"""

from __future__ import annotations

from trainers.evaluation import EVAL_BATCH_SIZE, all_gather_lists, eval_mode, model_device, shard_calls
from trainers.preference import (PairCollator, PairLoss, completion_logps, preference_loss,
                                 require_pair_columns, tokenize_pairs)
from trainers.tasks import Task, register

PREFERENCE_METRICS = ("eval_loss", "reward_accuracy", "reward_margin", "preference_accuracy")


class Preference(Task):
    name = "preference"
    kinds = ("decoder",)
    metrics = PREFERENCE_METRICS
    objective = "reward_accuracy"
    has_test_metrics = True
    reference_forwards = 1  # the reference model's pass (the adapter off), without gradients
    needs_chat_template = True

    def check_columns(self, columns, settings):
        require_pair_columns(columns, settings.dataset)

    def tokenize(self, settings, tokenizer, rows):
        return tokenize_pairs(tokenizer, rows, settings.max_seq_length)

    def collator(self, settings, tokenizer):
        return PairCollator(tokenizer.pad_token_id, kl=settings.loss_type == "kto")

    def training_loss(self, settings):
        return PairLoss(settings.loss_type, settings.beta)

    # ------------------------------------------------------------------ scoring
    def pair_stats(self, model, tokenizer, settings, examples, shard=(0, 1)) -> list[tuple[float, float, float]]:
        """Per pair of this rank's share (gathered from every rank, in rank order): (its loss under
        the trial's loss_type and beta, the implicit reward margin in nats, the model's own per-token
        log-likelihood margin). The reference is the adapter switched off; a model without one (the
        base) is its own reference."""
        collate = PairCollator(tokenizer.pad_token_id, kl=settings.loss_type == "kto")
        device = model_device(model)
        has_adapter = hasattr(model, "disable_adapter")
        out = []
        with eval_mode(model):
            for idx, keep in shard_calls(len(examples), EVAL_BATCH_SIZE, shard):
                if settings.loss_type == "kto" and len(idx) == 1:
                    idx = idx * 2  # KTO's KL term needs a second reply; the duplicate is dropped below
                batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx]).items()}
                policy = completion_logps(model, batch)
                if has_adapter:
                    with model.disable_adapter():
                        reference = completion_logps(model, batch)
                else:
                    reference = policy
                loss, own_margin = preference_loss(settings.loss_type, settings.beta, policy,
                                              None if settings.loss_type == "orpo" else reference, len(idx))
                # the reward margin from summed log-ratios whatever the loss uses (one measure for all trials)
                n = len(idx)
                margin = (policy[0][:n] - reference[0][:n]) - (policy[0][n : 2 * n] - reference[0][n : 2 * n])
                if keep:
                    rows = list(zip(loss.tolist(), margin.tolist(), own_margin.tolist()))
                    out += rows[: len(set(idx))]
        return all_gather_lists(out)

    @staticmethod
    def per_pair(stats) -> dict[str, list[float]]:
        """Each pair's value of every metric; the two accuracies count a tie half."""
        return {"eval_loss": [s[0] for s in stats], "reward_accuracy": [_win(s[1]) for s in stats],
                "reward_margin": [s[1] for s in stats], "preference_accuracy": [_win(s[2]) for s in stats]}

    def evaluate(self, model, tokenizer, settings, prepared, shard=(0, 1)):
        stats = self.pair_stats(model, tokenizer, settings, prepared.eval.examples, shard)
        return {k: sum(v) / max(len(v), 1) for k, v in self.per_pair(stats).items()}

    def score(self, model, tokenizer, settings, rows, shots_from, shots):
        examples = self.tokenize(settings, tokenizer, rows).examples
        each = self.per_pair(self.pair_stats(model, tokenizer, settings, examples))
        return {"n": len(each["eval_loss"]), **{k: sum(v) / max(len(v), 1) for k, v in each.items()},
                "per_example": each}


def _win(margin: float) -> float:
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


PREFERENCE = register(Preference())

