"""`SGPOConfig`: TRL's `OnlineDPOConfig` plus the improver, pair and schedule settings of SGPO."""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from trl.experimental.online_dpo import OnlineDPOConfig

from .config_checks import check_config
from .data.prompt_lengths import LONG_PROMPT_MODES
from .method.improver import IMPROVER_FORMATS, TARGET_STRATEGIES
from .method.objectives import POLICY_SFT_TARGETS
from .method.pairs import PAIR_GATES, PAIR_SOURCES
from .method.schedule import WARMUP_DRAFT_SOURCES


DEFAULT_IMPROVER_TEMPLATE = (
    "Below is a prompt and a draft response. Rewrite the draft into a better response: fix what is wrong or "
    "missing, keep what is already good, and answer with the improved response only.\n\n"
    "### Prompt:\n{prompt}\n\n### Draft response:\n{response}"
)
# The user turn that asks for a rewrite when the improver is the next turn of the policy's conversation.
DEFAULT_IMPROVER_INSTRUCTION = (
    "Improve your response above: fix what is wrong or missing, keep what is already good, and answer with the "
    "improved response only."
)


@dataclass
class SGPOConfig(OnlineDPOConfig):
    r"""
    Configuration class for [`SGPOTrainer`].

    SGPO (Self-Generated Preference Optimization, [arXiv:2507.20181](https://arxiv.org/abs/2507.20181)) trains one
    model in two roles: the *policy* answers a prompt with `y`, the *improver* rewrites `y` into a better `y'`. The
    improver role is trained, supervised, towards the SFT references of the dataset; the policy is trained with DPO on
    `(chosen=y', rejected=y)`. This class adds SGPO's settings to TRL's `OnlineDPOConfig`; every parent field
    (`beta`, `loss_type`, `max_new_tokens`, `temperature`, `use_vllm`, ...) keeps its meaning and applies to the
    policy's samples and the DPO loss. The reward-related parent fields (`reward_model_path`, `reward_weights`,
    `missing_eos_penalty`) are rejected: SGPO has no reward.

    Which details follow the paper and which are this project's own design is marked on each field: the paper does
    not publish its improver prompt, its target construction or its hyperparameters.

    Parameters:
        > Improver role (our design: the paper gives no template or target construction)

        improver_format (`str`, *optional*, defaults to `"auto"`):
            How the improver is prompted. The paper's improver reads the prompt `x` and the draft `y` and writes `y'`;
            how it is shown them is not published, so both formats are ours. `"template"`: one new user turn built
            from `improver_template` around `x` and `y`. `"next_turn"`: the next turn of the policy's own
            conversation, `[user: x] [assistant: y] [user: improver_instruction] [assistant: y']`; the policy's
            prompt and draft are then a prefix of the improver's prompt, so the rewrite is generated on the draft's
            KV cache (transformers; with vLLM, its prefix caching reuses the prefix) and, in DPO steps, one packed
            forward pass scores the draft, the improver's target, the rewrite and the reference. Conversational
            prompts go through the tokenizer's chat template (which must render an earlier assistant turn as the
            policy's generation prompt followed by the draft: checked when the trainer is built); text prompts
            continue as plain text: the draft, its EOS token, a newline, the instruction and a newline.
            `improver_template` is not used with `"next_turn"`. `"auto"` (the default): `"next_turn"` for
            conversational data whose chat template passes that check, `"template"` otherwise; the trainer resolves
            it when it is built (and logs which and why). On the quality benchmark both formats scored the same
            (next turn 57.7 ± 0.6, template 57.4 ± 0.8) and next-turn runs took 0.6x the time.
        improver_instruction (`str`, *optional*):
            The user turn that asks for the rewrite with `improver_format="next_turn"`. It may show `{reference}`
            (the SFT reference: a reference-aware improver), not `{prompt}` or `{response}` (they are the earlier
            turns). Defaults to a one-sentence request to improve the answer above (our wording); for a
            character-level model, a short one (the built-in world uses `"improve"`).
        improver_template (`str` or `Callable`, *optional*):
            Prompt of the improver role. A string with the fields `{prompt}` (the user's request: the text prompt, or
            the content of the last user message of a conversational prompt) and `{response}` (the policy's draft),
            and optionally `{reference}` (the SFT reference of the prompt: a *reference-aware* improver, one reading
            of the paper's "by referencing SFT outputs"; the default template shows no reference, the likelier
            reading, since SynPO's improver, which SGPO builds on, sees only the prompt and the draft).
            Rendered through the tokenizer's chat template as a user turn when the tokenizer has one (earlier turns
            of a conversational prompt are kept before it), else used as plain text. In Python it may also be a
            callable `(prompt, response) -> str | list[dict]`; a returned message list is rendered as is.
        improver_target (`str`, *optional*, defaults to `"keep_plausible"`):
            What the improver is trained to write for a draft `y`. `"keep_plausible"`: `y` itself where the initial
            policy (the DPO reference model) finds it at least as plausible per token as the reference, the
            reference elsewhere: on requests with many right answers a right draft seldom equals its reference, and
            `"reference"` teaches the improver to swap right answers for others. `"reference"`: the SFT reference
            itself (as in SynPO). `"interpolate"`: `y` with the first `improver_alpha` fraction of the token-level
            edit operations that turn `y` into the reference applied (an incremental step). Our design; on the
            real-model probe (`python benchmarks/pair_probe.py`) `"keep_plausible"` kept 93 of 256 greedy pairs, 44%
            of them informative, 98% of those the right way, against 228, 23% and 94% for `"reference"`.
        improver_alpha (`float`, *optional*, defaults to `0.5`):
            Fraction of the edit operations applied by the `"interpolate"` strategy, in `[0, 1]`.
        improver_drop_unchanged (`bool`, *optional*, defaults to `False`):
            Drop improver targets equal to the draft. Off by default: trained only on changes, the improver learns
            to change every draft, right ones included (measured on the built-in world).
        improver_filter_outliers (`bool`, *optional*, defaults to `True`):
            Drop improver targets whose improvement lies outside the Tukey fences of the batch, `[Q1 - k*IQR, Q3 +
            k*IQR]`: keeps improvements incremental. The improvement is the edit size, or with `"keep_plausible"`
            the initial policy's plausibility gain of a moved target (kept drafts are never dropped). Needs >= 4.
        improver_outlier_k (`float`, *optional*, defaults to `1.5`):
            The `k` of the Tukey fences.
        improver_max_new_tokens (`int`, *optional*):
            Maximum tokens of an improved response. Defaults to `max_new_tokens`.
        improver_temperature (`float`, *optional*, defaults to `0.0`):
            Sampling temperature of the improver; `0` means greedy (the default); `None`: `temperature`. On the
            real-model probe, of the pairs the checker tells apart, sampled rewrites had the better side chosen in
            54%, greedy ones in 94%.
        improver_top_p (`float`, *optional*):
            Top-p of the improver's sampling. Defaults to `top_p`.
        improver_speculative_tokens (`int`, *optional*, defaults to `0`):
            Speculate the improver's rewrite from its draft (prompt-lookup decoding): each forward pass proposes up to
            this many of the draft's next tokens and keeps those the model agrees with, plus one of its own. Exact:
            greedy rewrites are token for token the plain ones, sampled ones follow the same distribution. `0`:
            off. transformers generation only (not with `use_vllm`).
        log_completions (`bool`, *optional*, defaults to `False`):
            TRL's option (as in GRPO): every `logging_steps` steps, print a sample of the last step's rows with
            `rich` (prompt, policy response, improved response, reference, kept?) and log it as a `completions` table
            to wandb and trackio where `report_to` names them.
        num_completions_to_print (`int`, *optional*):
            How many rows `log_completions` shows; all rows of the step if unset.
        long_prompts (`str`, *optional*, defaults to `"error"`):
            What to do with rows whose rendered prompt leaves no room, within `max_length`, for the improver
            template, a draft and a rewrite (or the row's reference, where longer: the improver's default target is
            the reference): `"error"` refuses the data set before training (naming the row and the
            arithmetic), `"drop"` skips those rows, `"truncate"` cuts their prompts from the left (earliest turns
            first, a leading system message kept), the reference always whole. Dropped or cut rows are counted and
            said once, before training. The default asks for consent: both other modes change what is trained on.

        > Pairs and loss

        pair_source (`str`, *optional*, defaults to `"sgpo"`):
            Where the chosen side of a DPO pair comes from. `"sgpo"`: the improver's rewrite of the policy sample
            (the paper). `"spin"`: the SFT reference (the SPIN baseline, run in the same trainer). `"edit"`: the draft
            with the first `improver_alpha` fraction of its token edits towards the reference applied, by arithmetic
            (an ablation of ours: what the learned improver adds over a mechanical step). `"self_sharpen"`: the
            policy's own greedy answer (a control of ours: what sharpening toward the policy's mode gains, which the
            improver must beat to be credited). With those three no improver role is trained: improver phases and
            the improver loss are skipped.
        pair_gate (`str`, *optional*, defaults to `"reference_margin"`):
            Drop the DPO pairs the model's own evidence does not support, without a reward (our design):
            `"reference_margin"` (the initial policy finds the rewrite more plausible per token than the draft; free,
            the DPO loss needs those log-probabilities anyway), `"improver_keep"` (the improver prefers its rewrite to
            keeping the draft), `"round_trip"` (the improver leaves its own rewrite unchanged), or `"none"`. Dropped
            pairs are logged as `sgpo/pairs_gated`. On the real-model probe it took greedy pairs from 94% to 98%
            the right way (`"reference"` targets) and from 98% to 100% (`"keep_plausible"`).
        pair_gate_margin (`float`, *optional*, defaults to `0.0`):
            The least per-token log-probability margin a pair must show to pass `"reference_margin"` or
            `"improver_keep"`.
        improver_loss_weight (`float`, *optional*, defaults to `0.3`):
            Weight of the improver's supervised loss (with its `policy_sft_weight` term) added to the DPO loss in DPO
            steps (our design): it keeps the improver role trained while DPO moves the shared weights. Measured on the
            built-in world: without it (or at `0.1`) the improver drifted and the policy collapsed; at `1.0` it
            pulled the policy back toward the references and halved DPO's gain.
        improver_learning_rate (`float`, *optional*):
            Learning rate of improver steps (Step 1 and the improver refreshes), under the same schedule as
            `learning_rate`, which then applies to DPO steps only (our design). The improver's update is supervised
            learning of a new skill, which takes a learning rate at which DPO collapses; in our measurements on the
            built-in world the improver stayed untrained at DPO's learning rate. `None`: `learning_rate`.
        policy_sft_weight (`float`, *optional*, defaults to `1.0`):
            Weight of the policy's own SFT loss (token-mean NLL of the reference under the plain prompt) mixed into
            every improver update (our design). One model holds both roles: in our measurements improver-only
            updates erased the policy role of a small model (exact match 38% -> 11% in 100 updates), and this term
            kept it.
        policy_sft_target (`str`, *optional*, defaults to `"reference"`):
            What the policy's SFT term trains on (our design). `"reference"`: the dataset's completions.
            `"draft"`: the policy's own drafts (in Step 1 the initial policy's samples), whose NLL keeps the policy
            where it started, in expectation, instead of pulling it toward the references' wording.
        chosen_nll_weight (`float`, *optional*, defaults to `0.0`):
            Weight of an NLL term on the chosen side of each kept pair (as in RPO).

        > Alternation schedule (our design; the paper alternates the two updates in one run)

        improver_warmup_steps (`float`, *optional*, defaults to `0.1`):
            The paper's Step 1: optimizer steps of improver training before the first DPO step (Figure 1 trains the
            improver on the initial policy's samples, then optimizes preferences). A value below 1 is a fraction of
            the run's total steps (like `warmup_steps` in transformers); 0 starts with the cycles at once. Watch
            `sgpo/rewrite_closer` (warned about when low): if rewrites do not beat drafts, lengthen it.
        improver_warmup_only (`bool`, *optional*, defaults to `False`):
            Run Step 1 alone, as the paper stages it: every step trains the improver; with one epoch and
            `improver_warmup_drafts="initial"`, on the initial policy's drafts of every training prompt, once. The
            saved model (merged, with PEFT) starts any number of Step 2 runs (`--improver_warmup_steps 0`), which is
            how the real-model benchmark runs SGPO.
        improver_ready_at (`float`, *optional*):
            End Step 1 as soon as this share of held-out rewrites does what Step 1 teaches (keeps a draft the initial
            policy finds as plausible as its reference, or makes an implausible one more plausible; greedy, measured
            every `improver_readiness_steps` steps on `improver_readiness_prompts` training rows set aside);
            `improver_warmup_steps` is then the cap, reached unready at error level. Unset (default): Step 1 lasts
            `improver_warmup_steps`.
        improver_readiness_steps (`int`, *optional*, defaults to `5`), improver_readiness_prompts (`int`, *optional*,
            defaults to `8`): how often, and on how many held-out rows, `improver_ready_at` measures.
        improver_warmup_drafts (`str`, *optional*, defaults to `"initial"`):
            Where Step 1's drafts come from. `"initial"` (the default): the paper's Figure 1, drafts of the *initial*
            policy, sampled once before Step 1's first update for as many training rows as Step 1 can use (its
            length or cap times a step's rows, at most the data set); Step 1's steps train on them in turn without
            generating (`run/initial_drafts.py`). `"fresh"`: sampled from the current model at every Step 1 step.
        improver_steps (`int`, *optional*, defaults to `0`):
            Improver-phase steps at the start of each cycle after Step 1. `0` (the default): no improver-only
            refreshes, every step after Step 1 is a DPO step, whose `improver_loss_weight` term keeps the improver
            trained. Measured on the built-in world: alternating one improver step with one DPO step lost about half
            of the gain (the refreshes' SFT term pulls the policy back toward the references).
        dpo_steps (`int`, *optional*, defaults to `1`):
            DPO-phase steps at the end of each cycle.
        num_cycles (`int`, *optional*):
            Number of cycles; after them every step is a DPO step. `None`: cycles repeat until training ends.
        sync_ref_model_each_dpo_phase (`bool`, *optional*, defaults to `False`):
            Copy the current weights into the DPO reference model when a DPO phase starts (not with PEFT, whose
            reference is the base model with the adapter disabled).

        > Evaluation and outputs

        eval_metric (`str`, *optional*):
            An `evaluate` metric, by local module path (or Hub id when online), computed at each evaluation on greedy
            generations for the eval prompts against their references (`predictions=`, `references=` strings) and
            logged as `eval_<name>`. The trainer also takes a loaded `evaluate` module or a callable.

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Allow a new (not resumed) run to write into a non-empty `output_dir`. Without it such a run is refused
            before training starts, so an earlier run's checkpoints are never mixed with or replaced by new ones.
    """

    improver_format: str = field(
        default="auto",
        metadata={
            "help": "How the improver is prompted: 'template' (one user turn built from improver_template around the "
            "prompt and the draft), 'next_turn' (the next turn of the policy's conversation: [user: x] [assistant: "
            "y] [user: improver_instruction] [assistant: y']; the rewrite continues from the draft's cache and one "
            "forward pass scores both roles) or 'auto' (next_turn for conversational data whose chat template "
            "continues the prompt, else template; resolved when the trainer is built). Both formats are our design: "
            "the paper does not publish its improver prompt.",
            "choices": list(IMPROVER_FORMATS),
        },
    )
    improver_instruction: str = field(
        default=DEFAULT_IMPROVER_INSTRUCTION,
        metadata={
            "help": "The user turn asking for a rewrite with improver_format='next_turn'; may show {reference}, not "
            "{prompt} or {response} (they are the earlier turns). Our wording."
        },
    )
    # Annotated `str` for the command line; a callable is accepted when set from Python.
    improver_template: str = field(
        default=DEFAULT_IMPROVER_TEMPLATE,
        metadata={
            "help": "Prompt of the improver role: a string with the fields {prompt} and {response}, rendered through "
            "the tokenizer's chat template as a user turn (or a callable (prompt, response) -> str | messages, in "
            "Python). Our design: the paper does not publish its template."
        },
    )
    improver_target: str = field(
        default="keep_plausible",
        metadata={
            "help": "What the improver is trained to write for a draft: 'keep_plausible' (the draft where the initial "
            "policy finds it as plausible per token as the reference, else the reference), 'reference' or "
            "'interpolate' (the draft with a fraction improver_alpha of its token edits towards the reference).",
            "choices": list(TARGET_STRATEGIES),
        },
    )
    improver_alpha: float = field(
        default=0.5,
        metadata={"help": "Fraction in [0, 1] of the draft-to-reference edit operations applied by 'interpolate'."},
    )
    improver_drop_unchanged: bool = field(
        default=False,
        metadata={"help": "Drop improver targets equal to the draft (no discernible improvement)."},
    )
    improver_filter_outliers: bool = field(
        default=True,
        metadata={
            "help": "Drop improver targets whose improvement size lies outside the batch's Tukey fences "
            "[Q1 - k*IQR, Q3 + k*IQR] (keeps improvements incremental). Needs at least 4 targets."
        },
    )
    improver_outlier_k: float = field(
        default=1.5,
        metadata={"help": "The k of the Tukey fences used by improver_filter_outliers."},
    )
    improver_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Maximum tokens of an improved response. Defaults to max_new_tokens."},
    )
    improver_temperature: float | None = field(
        default=0.0,
        metadata={"help": "Sampling temperature of the improver (0 = greedy, the default; unset: temperature)."},
    )
    improver_top_p: float | None = field(
        default=None,
        metadata={"help": "Top-p of the improver's sampling. Defaults to top_p."},
    )
    improver_speculative_tokens: int = field(
        default=0,
        metadata={
            "help": "Speculate the improver's rewrite from its draft (prompt-lookup decoding): each forward pass "
            "proposes up to this many of the draft's next tokens and keeps those the model agrees with. Exact (the "
            "same greedy rewrites, the same sampling distribution). 0: off. transformers generation only."
        },
    )
    log_completions: bool = field(
        default=False,
        metadata={
            "help": "Every logging_steps steps, print a sample of the last step's rows with rich (prompt, policy "
            "response, improved response, reference, kept?) and log it as a 'completions' table to wandb and "
            "trackio where report_to names them (TRL's option, as in GRPO)."
        },
    )
    num_completions_to_print: int | None = field(
        default=None,
        metadata={"help": "How many rows log_completions shows (all rows of the step if unset)."},
    )
    long_prompts: str = field(
        default="error",
        metadata={
            "help": "Rows whose prompt does not fit in max_length with the improver template, a draft and a rewrite "
            "(or the reference, where longer): 'error' (refuse the data before training), 'drop' (skip them) or "
            "'truncate' (cut the prompt from the left, earliest turns first; the reference stays whole). "
            "Dropped or cut rows are counted up front.",
            "choices": list(LONG_PROMPT_MODES),
        },
    )
    # TRL's help says the leftmost tokens are truncated; SGPO measures every prompt before training instead.
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Maximum tokens of any sequence SGPO scores; the longest is the improver's (its template, the "
            "prompt, a draft of max_new_tokens, a rewrite of improver_max_new_tokens or the reference as its target). "
            "Every prompt and reference is measured before training against what is left; rows that do not fit are "
            "handled by long_prompts."
        },
    )
    pair_source: str = field(
        default="sgpo",
        metadata={
            "help": "Chosen side of the DPO pairs: 'sgpo' (the improver's rewrite), 'spin' (the SFT reference; the "
            "SPIN baseline), 'edit' (the draft with a fraction improver_alpha of its edits towards the reference; "
            "a model-free ablation) or 'self_sharpen' (the policy's greedy answer; a control). Only 'sgpo' trains the "
            "improver role.",
            "choices": list(PAIR_SOURCES),
        },
    )
    pair_gate: str = field(
        default="reference_margin",
        metadata={
            "help": "Drop DPO pairs the model's own evidence does not support, without a reward: 'reference_margin' "
            "(the initial policy finds the rewrite more plausible per token than the draft), 'improver_keep' (the "
            "improver prefers its rewrite to keeping the draft), 'round_trip' (the improver leaves its own rewrite "
            "unchanged), or 'none'. Dropped pairs are logged as sgpo/pairs_gated. Our design.",
            "choices": list(PAIR_GATES),
        },
    )
    pair_gate_margin: float = field(
        default=0.0,
        metadata={
            "help": "The least per-token log-probability margin a pair must show to pass 'reference_margin' or "
            "'improver_keep'."
        },
    )
    improver_loss_weight: float = field(
        default=0.3,
        metadata={"help": "Weight of the improver's supervised loss added in DPO steps (0 disables it)."},
    )
    improver_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of improver steps, under learning_rate's schedule (which then applies to DPO "
            "steps only). Unset: learning_rate. Our design."
        },
    )
    policy_sft_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the policy's SFT loss on the references mixed into every improver update (0 disables "
            "it). Keeps the policy role intact while the shared model learns the improver role. Our design."
        },
    )
    policy_sft_target: str = field(
        default="reference",
        metadata={
            "help": "What the policy's SFT term trains on: 'reference' (the dataset's completions) or 'draft' (the "
            "policy's own drafts: an anchor that keeps the policy where it started). Our design.",
            "choices": list(POLICY_SFT_TARGETS),
        },
    )
    chosen_nll_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of an NLL term on the chosen side of each kept pair (0 disables it)."},
    )
    improver_warmup_steps: float = field(
        default=0.1,
        metadata={
            "help": "The paper's Step 1: improver-training steps before the first DPO step. Below 1: a fraction of "
            "the run's total steps. 0: start with the improver/DPO cycles at once."
        },
    )
    improver_warmup_only: bool = field(
        default=False,
        metadata={
            "help": "Run Step 1 alone: every step trains the improver (one epoch over the data with "
            "improver_warmup_drafts='initial' is the paper's Step 1: the initial policy's drafts of every training "
            "prompt, one pass). The saved model (merged, with PEFT) starts any number of Step 2 runs: "
            "--model_name_or_path <output_dir> --improver_warmup_steps 0."
        },
    )
    improver_ready_at: float | None = field(
        default=None,
        metadata={
            "help": "End Step 1 once this share of held-out rewrites gains token overlap with the reference "
            "(improver_warmup_steps is then the cap). Unset: Step 1 lasts improver_warmup_steps."
        },
    )
    improver_readiness_steps: int = field(
        default=5, metadata={"help": "With improver_ready_at: measure the readiness every this many steps."}
    )
    improver_readiness_prompts: int = field(
        default=8,
        metadata={"help": "With improver_ready_at: training rows set aside to measure the readiness on."},
    )
    improver_warmup_drafts: str = field(
        default="initial",
        metadata={
            "help": "Step 1's drafts: 'initial' (the paper's Figure 1: sampled once from the initial policy before "
            "Step 1, then trained on in turn) or 'fresh' (sampled from the current model every step).",
            "choices": list(WARMUP_DRAFT_SOURCES),
        },
    )
    improver_steps: int = field(
        default=0,
        metadata={
            "help": "Improver-phase optimizer steps at the start of each cycle after Step 1. 0: no refreshes, DPO "
            "steps only after Step 1 (their improver_loss_weight term keeps the improver trained)."
        },
    )
    dpo_steps: int = field(
        default=1,
        metadata={"help": "DPO-phase optimizer steps at the end of each cycle."},
    )
    num_cycles: int | None = field(
        default=None,
        metadata={"help": "Number of improver/DPO cycles; afterwards every step is a DPO step. Unset: no limit."},
    )
    sync_ref_model_each_dpo_phase: bool = field(
        default=False,
        metadata={"help": "Copy the current weights into the DPO reference model when a DPO phase starts."},
    )
    eval_metric: str | None = field(
        default=None,
        metadata={
            "help": "An `evaluate` metric (a local module path, or a Hub id when online) computed on greedy "
            "generations for the eval prompts against their references, logged as eval_<name>."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Allow a new run to write into a non-empty output_dir (refused otherwise)."},
    )
    # GPU-minded parent defaults made device-aware: unset means "on if a CUDA device is present".
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Use bf16 mixed precision. Unset: on when a bf16-capable CUDA GPU is present and fp16 and "
            "use_cpu are off, off otherwise (so CPU runs need no flag)."
        },
    )
    dataloader_pin_memory: bool | None = field(
        default=None,
        metadata={
            "help": "Pin the data loader's memory. Unset: on when a CUDA GPU is present (and use_cpu is off), off "
            "on the CPU, where pinning does nothing but warn."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Trade compute for memory. Unset: on when a CUDA GPU is present (and use_cpu is off), off on CPU, "
            "where it would also disable the KV cache during generation."
        },
    )

    def __getstate__(self) -> dict[str, Any]:
        # `Trainer` pickles the arguments into training_args.bin (in saves and checkpoints) and `push_to_hub` uploads
        # that file: never write the Hub token there. The live object keeps it for pushing.
        state = dict(self.__dict__)
        state["hub_token"] = None
        return state

    def __post_init__(self):
        on_gpu = torch.cuda.is_available() and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = bool(on_gpu and not self.fp16 and torch.cuda.is_bf16_supported())
        if self.dataloader_pin_memory is None:
            self.dataloader_pin_memory = on_gpu
        if self.gradient_checkpointing is None:
            # Newer transformers renamed it `activation_checkpointing` and warn (FutureWarning) whenever the old name
            # is set: resolve the device default into the new name where it exists.
            if "activation_checkpointing" in {f.name for f in dataclasses.fields(self)}:
                if self.activation_checkpointing is None:
                    self.activation_checkpointing = on_gpu
            else:
                self.gradient_checkpointing = on_gpu
        super().__post_init__()
        check_config(self)  # before any model is loaded

    def to_dict(self) -> dict[str, Any]:
        # A callable template cannot be serialised to JSON (logs, model cards): record its name instead.
        config = super().to_dict()
        if isinstance(self.improver_template, Callable):
            template = self.improver_template
            config["improver_template"] = f"<callable {getattr(template, '__qualname__', repr(template))}>"
        return config


def sgpo_field_names() -> list[str]:
    """The names of the fields `SGPOConfig` adds to TRL's `OnlineDPOConfig`, in declaration order."""
    parent = {f.name for f in dataclasses.fields(OnlineDPOConfig)}
    return [f.name for f in dataclasses.fields(SGPOConfig) if f.name not in parent]
