"""``toy_accuracy``: exact match and partial credit on the answers of trl_sgpo's toy world.

Load it by path, offline (no Hub)::

    import evaluate
    from trl_sgpo.toy import TOY_METRIC_PATH

    metric = evaluate.load(TOY_METRIC_PATH)
    metric.compute(predictions=["a) cba; b) ABC; c) 12"], references=["cba | ABC | 13"])
    # {'exact_match': 0.0, 'partial_credit': 0.666...}

Predictions and references are answers written in either surface form of the world (``a) x; b) y`` or
``x | y``, or a mix): both are parsed into parts and compared part by part, so the form does not count,
only the content. The checking itself lives in ``trl_sgpo.toy.checker``, shared with ``trl_sgpo.toy.score``.
"""

import datasets
import evaluate

from trl_sgpo.toy.checker import check_answer, parse_parts


_CITATION = """\
@article{lee2025sgpo,
  title   = {SGPO: Self-Generated Preference Optimization based on Self-Improver},
  author  = {Lee, Hyeonji and Jo, Daejin and Yun, Seohwan and Kim, Sungwoong},
  journal = {arXiv preprint arXiv:2507.20181},
  year    = {2025}
}
"""

_DESCRIPTION = """\
Exact match and partial credit (fraction of answer parts right) for the verifiable string tasks of
trl_sgpo's toy world. Answers are compared by content: both surface forms of the world parse to the same parts.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[str]): generated answers.
    references (list[str]): gold answers, in either surface form.
Returns:
    exact_match (float): fraction of predictions whose parts all equal the gold parts.
    partial_credit (float): mean fraction of right parts (extra parts count as wrong).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ToyAccuracy(evaluate.Metric):
    """Exact match and partial credit, by content, for the toy world's answers."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        checks = [check_answer(pred, parse_parts(ref)) for pred, ref in zip(predictions, references)]
        n = max(len(checks), 1)
        return {
            "exact_match": sum(c.exact_match for c in checks) / n,
            "partial_credit": sum(c.partial_credit for c in checks) / n,
        }
