"""Evaluation for `SGPOTrainer`: the policy's NLL of the SFT references as ``eval_loss``, and an optional metric
(``eval_metric``) on greedy generations, as a mixin that overrides `transformers.Trainer`'s evaluation hooks."""

from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn

from ..data.rows import reference_text


def load_eval_metric(metric: Any) -> Any:
    """An `evaluate` metric from its name (loaded from the local cache or the Hub); anything else as it is."""
    if isinstance(metric, str):
        import evaluate

        return evaluate.load(metric)
    return metric


class EvaluationMixin:
    """A part of `SGPOTrainer`: needs its ``layout``, ``scorer``, ``draft`` (stage), ``eval_metric`` and
    ``processing_class``."""

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation loss: the policy's token-mean NLL of the SFT references.

        Upstream has no `prediction_step` for prompt-only data and crashes in `Trainer.compute_loss`. The reference
        NLL needs no sampling, so it is deterministic and comparable between evaluations.
        """
        texts = self.layout.policy_prompt_texts(inputs["prompt"])
        prompt_ids, prompt_mask = self.layout.tokenize_prompts(texts)
        references = self.layout.pad(
            [self.layout.reference_completion(reference_text(completion)) for completion in inputs["completion"]]
        )
        with torch.no_grad():
            logps = self.scorer.forward(model, prompt_ids, prompt_mask, references.ids, references.mask)
            loss = -(logps * references.mask).sum() / references.mask.sum()
        return loss.detach(), None, None

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ):
        """The parent's loop (the reference NLL as `eval_loss`), plus `eval_metric` on greedy generations."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.eval_metric is not None:
            for name, value in self._generation_metrics(dataloader).items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        return output

    def _generation_metrics(self, dataloader) -> dict[str, float]:
        predictions, references = [], []
        model = self.model_wrapped
        model.eval()
        for rows in dataloader:
            batch = self.draft(model, rows, role="eval")  # greedy answers
            predictions += self.processing_class.batch_decode(
                [c.token_ids for c in batch.drafts], skip_special_tokens=True
            )
            references += batch.reference_texts
        predictions, references = gather_object(predictions), gather_object(references)
        if callable(self.eval_metric) and not hasattr(self.eval_metric, "compute"):
            scores = self.eval_metric(predictions=predictions, references=references)
        else:
            scores = self.eval_metric.compute(predictions=predictions, references=references)
        return {name: float(value) for name, value in scores.items() if isinstance(value, (int, float))}
