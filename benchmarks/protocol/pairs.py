"""The pair diagnostics of the quality benchmarks: each DPO pair judged with the task's checker (is the improver's
rewrite better than the draft, worse, or equal?), and how much of each rewrite is copied from its draft."""

import difflib
import functools
import statistics
from collections.abc import Callable


def copied_share(draft_ids: list[int], rewrite_ids: list[int]) -> float:
    """The share of the rewrite's tokens copied from the draft: the tokens of their longest matching blocks
    (difflib), over the rewrite's length. What a rewrite speculated from the draft could accept without sampling."""
    if not rewrite_ids:
        return 0.0
    blocks = difflib.SequenceMatcher(a=draft_ids, b=rewrite_ids, autojunk=False).get_matching_blocks()
    return sum(block.size for block in blocks) / len(rewrite_ids)


class PairDiagnostics:
    """Judges each DPO pair with the checker: is the improver's rewrite better than the draft, worse, or equal?
    Also measures how much of each rewrite is copied from its draft (``copied_share``).

    It reads the trainer's public per-step record (`trl_sgpo.records.StepRecord`, through ``step_listeners``): the
    rows' ``gold_column``, the drafts and the rewrites of every DPO step whose chosen side the improver wrote.
    ``score(text, gold)`` is the checker's partial credit of ``text`` given a row's ``gold_column`` value.
    """

    def __init__(
        self, trainer, gold_column: str, score: Callable[[str, str], float], skip_special_tokens: bool = False
    ):
        self.counts = {"better": 0, "worse": 0, "same_score": 0, "identical": 0, "pairs": 0}
        self.copied: list[float] = []
        self._score = score
        self._gold_column = gold_column
        self._decode = functools.partial(
            trainer.processing_class.batch_decode, skip_special_tokens=skip_special_tokens
        )
        trainer.step_listeners.append(self.on_step_record)

    def on_step_record(self, record) -> None:
        if record.rewrites is None:
            return
        draft_ids = [list(c.token_ids) for c in record.drafts]
        rewrite_ids = [list(c.token_ids) for c in record.rewrites]
        self._gold, self._drafts = list(record.rows[self._gold_column]), self._decode(draft_ids)
        self._judge(self._decode(rewrite_ids))
        self.copied += [copied_share(d, r) for d, r in zip(draft_ids, rewrite_ids)]

    def _judge(self, rewrites: list[str]) -> None:
        for gold, draft, rewrite in zip(self._gold, self._drafts, rewrites):
            self.counts["pairs"] += 1
            if draft == rewrite:
                self.counts["identical"] += 1
                continue
            before, after = self._score(draft, gold), self._score(rewrite, gold)
            key = "better" if after > before else "worse" if after < before else "same_score"
            self.counts[key] += 1

    def summary(self) -> dict[str, float]:
        pairs = max(self.counts["pairs"], 1)
        shares = {f"rewrite_{key}": value / pairs for key, value in self.counts.items() if key != "pairs"}
        return shares | ({"copied_share": statistics.fmean(self.copied)} if self.copied else {})
