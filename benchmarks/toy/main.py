"""Does SGPO work? SGPO against its baselines and ablations on the built-in verifiable world.

    python benchmarks/quality.py --workers 2   # the full benchmark (3 seeds; see the results file for its time)
    python benchmarks/quality.py --quick       # a few steps per arm, for CI

The testbed is the paper's regime: the start is the shipped checkpoint, an SFT model trained on one fixed, finite SFT
set (prompts and references of the world's ``short`` regime) to its validation plateau, so that more SFT on the same
data no longer helps. Every arm then trains on that same SFT set, with the same number of optimizer updates and of
prompts per update (improver updates count as updates):

- ``sft``: continued supervised fine-tuning on the references;
- ``spin``: DPO with chosen = reference, rejected = own sample (SGPOTrainer, ``pair_source="spin"``);
- ``online_dpo_oracle``: TRL's OnlineDPOTrainer ranking its two samples per prompt with the world's checker as
  reward, tied pairs (both samples scored the same) made identical so that they carry no gradient, and counted. An
  oracle: it uses a reward SGPO does not have. It is the sensitivity gate: if it cannot beat the start by
  ``GATE_POINTS`` points of the headline metric, the testbed cannot tell methods apart, and the world must change;
- ``sgpo``: SGPO with the package's defaults (a short Step 1, then DPO steps; ``improver_format="auto"``, which is the
  next turn of the conversation on this world);
- ablations of SGPO, each changing one thing: ``sgpo_no_step1`` (no warm-up improver phase), ``sgpo_no_sft_mix``
  (``policy_sft_weight=0``), ``sgpo_draft_anchor`` (the policy's SFT term on its own drafts),
  ``sgpo_sees_reference`` (the improver's instruction also shows the reference), ``sgpo_template`` (the single-turn
  template format), and ``edit_pairs`` (chosen = the draft with half of its edits toward the reference applied by
  arithmetic, no model).

The learning rate of each method is chosen on the validation split from one grid (first seed); the SGPO ablations
use SGPO's. The chosen settings then run with every seed and are reported on the held-out test split, which plays no
part in any choice. For every arm with an improver, the DPO pairs are judged with the checker: is the rewrite better,
worse or no different than the draft it rewrote?

Output: a markdown table (printed, and written to ``benchmarks/results/quality.md``) and the raw numbers with a
``summary`` (``benchmarks/results/quality.json``).
"""

import json
import time
from dataclasses import asdict

from benchmarks.protocol.command import apply_overrides, parse_args, run_header, sgpo_defaults, write_report
from benchmarks.protocol.search import run_benchmark
from benchmarks.toy.arms import ARMS, HEADLINE, SEARCHED, Settings, regime, run_job, start_scores
from benchmarks.toy.report import markdown_table, summarize
from trl_sgpo.toy import TOY_IMPROVER_TEMPLATE, toy_checkpoint_metadata


SGPO_DEFAULTS = (  # the package's defaults the report records for the sgpo arm
    "improver_format",
    "improver_warmup_steps",
    "improver_steps",
    "dpo_steps",
    "improver_target",
    "improver_drop_unchanged",
    "improver_loss_weight",
    "policy_sft_weight",
    "policy_sft_target",
)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(
        argv, __doc__.split("\n\n")[0], list(ARMS), "start from this toy checkpoint (default: the shipped one)"
    )
    if args.render:  # the tables of an earlier run, e.g. after a change to how they are laid out
        with open(args.render) as handle:
            report = json.load(handle)
        write_report(report, markdown_table(report), args.output_dir, "quality")
        return report
    if args.quick:
        settings = Settings(
            steps=4, batch_size=8, learning_rates=(3e-5,), seeds=(0,), validation_prompts=16, test_prompts=16
        )
    else:
        settings = Settings()
    apply_overrides(settings, args)
    started = time.perf_counter()
    report = run_benchmark(
        settings,
        tuple(args.arms),
        args.workers,
        arm_table=ARMS,
        searched_methods=SEARCHED,
        runner=run_job,
        headline=HEADLINE,
    )
    defaults = sgpo_defaults(SGPO_DEFAULTS)
    report.update(
        **run_header("quality.py", argv, args.workers),
        settings=asdict(settings),
        arms=list(args.arms),
        regime=regime(settings.checkpoint),
        sft_set_size=toy_checkpoint_metadata(settings.checkpoint)["sft_data"]["num_examples"],
        start=start_scores(settings),
        sgpo_default=defaults
        | {"learning_rate": report["chosen_learning_rate"].get("sgpo"), "improver_template": TOY_IMPROVER_TEMPLATE},
        total_seconds=time.perf_counter() - started,
    )
    report["summary"] = summarize(report)
    write_report(report, markdown_table(report), args.output_dir, "quality")
    return report
