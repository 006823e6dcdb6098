"""The `trl-sgpo` command and `examples/sgpo.py`: train a model with SGPO from the command line.

With no model and no dataset it runs offline on the built-in verifiable world: it trains the shipped tiny
checkpoint, shows sample (prompt, response, improved response) rows while training, and prints held-out quality
before and after. With ``--model_name_or_path`` and ``--dataset_name`` (a Hub id or a local data file) it is the
real-world entry point; every `SGPOConfig` and `ModelConfig` option is a flag, and ``--config recipe.yaml`` works.
Options that cannot work are refused (`preflight`) before the data, then the model, are loaded.
"""

import os
import signal
import sys
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.trainer_callback import ProgressCallback
from transformers.utils import logging
from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config
from trl.trainer.callbacks import RichProgressCallback

from ..config import SGPOConfig, sgpo_field_names
from ..data.files import load_train_and_eval
from ..data.formats import prepare_training_data
from ..preflight import check_eval_data, check_options
from ..run.deepspeed_models import deepspeed_stage
from ..run.output_dir import check_output_dir
from ..toy.world import TOY_IMPROVER_INSTRUCTION
from ..trainer import SGPOTrainer


logger = logging.get_logger(__name__)


# A LoRA adapter trained at TRL's full-fine-tuning rate (5e-7) does not move (measured: largest lora_B norm 9e-5
# after 4 steps, greedy answers unchanged). With --use_peft and no rate of the user's, these apply, and are said: the
# rates the real-model benchmark validated for SGPO with LoRA (r=16) on SmolLM2 (docs/benchmarks.md).
LORA_RATES = {"learning_rate": 1e-4, "improver_learning_rate": 3e-4}


def apply_lora_rates(training_args: SGPOConfig, use_peft: bool) -> dict[str, float]:
    """With ``use_peft``, the LoRA rates where the user left the full-fine-tuning defaults; returns what changed."""
    if not use_peft:
        return {}
    changed = {}
    if training_args.learning_rate == SGPOConfig.learning_rate:
        changed["learning_rate"] = LORA_RATES["learning_rate"]
    if training_args.improver_learning_rate is None:
        changed["improver_learning_rate"] = LORA_RATES["improver_learning_rate"]
    for name, value in changed.items():
        setattr(training_args, name, value)
    if changed:
        logger.warning(
            "--use_peft at TRL's full-fine-tuning learning rate (%g) would barely move a LoRA adapter: using %s, the "
            "rates the real-model benchmark validated for LoRA. Pass --learning_rate / --improver_learning_rate to "
            "choose your own.",
            SGPOConfig.learning_rate,
            ", ".join(f"--{name} {value:g}" for name, value in changed.items()),
        )
    return changed


# Settings for the built-in world, applied only where the command line does not set them. They are the settings of
# `python benchmarks/quality.py` (60 updates of 32 prompts, greedy rewrites, SGPO's defaults), with the learning rate
# that its validation search chose for SGPO; see docs/benchmarks.md for what SGPO does and does not achieve there.
BUILTIN_DEFAULTS = {
    "output_dir": "sgpo-builtin-output",
    "per_device_train_batch_size": 32,
    "max_steps": 60,
    "learning_rate": 1e-4,  # SGPO's learning rate chosen on validation by benchmarks/quality.py
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 0.1,
    "beta": 0.1,
    "max_new_tokens": 24,
    "max_length": 256,
    "temperature": 1.0,
    "improver_temperature": 0.0,
    "logging_steps": 20,
    "log_completions": True,  # a sample table at each log: the rows SGPO trains on
    "num_completions_to_print": 3,
    "save_strategy": "no",
    "report_to": "none",
    "seed": 0,
}


@dataclass
class SGPOScriptArguments(ScriptArguments):
    """Script options on top of TRL's `ScriptArguments`; without a dataset name the built-in world is used."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Training data: a local .json/.jsonl/.csv/.parquet file, a folder written by save_to_disk or "
            "holding data files, or a Hub dataset id; prompt-completion rows or a 'messages' column (docs: Data "
            "formats). Unset: the built-in world."
        },
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Eval data, in the same forms as --dataset_name (its --dataset_test_split, or its only split). "
            "Unset: the --dataset_test_split of --dataset_name, if it has one. Needs --eval_strategy steps or epoch."
        },
    )
    builtin_regime: str = field(
        default="short",
        metadata={
            "help": "Regime of the built-in world. The shipped start was trained on 'short' (two-part numeric "
            "answers) only; 'plain' and 'shifted' are new to it.",
            "choices": ["short", "plain", "shifted"],
        },
    )
    builtin_train_prompts: int = field(default=2000, metadata={"help": "Training prompts drawn from the world."})
    builtin_eval_prompts: int = field(
        default=800, metadata={"help": "Held-out prompts scored before and after (the quality benchmark's test set)."}
    )


def _builtin_settings_text() -> str:
    settings = ", ".join(f"{name}={value}" for name, value in BUILTIN_DEFAULTS.items())
    return (
        "The defaults shown are those of a run on your own model and data. Without --model_name_or_path and "
        f"--dataset_name the built-in world runs instead, with these defaults (any flag still wins): {settings}."
    )


def make_parser() -> TrlParser:
    parser = TrlParser((SGPOScriptArguments, SGPOConfig, ModelConfig), epilog=_builtin_settings_text())
    # `--help` lists several hundred options; show SGPO's own together, under their own heading.
    group = parser.add_argument_group("SGPO options", "What SGPO adds to TRL's OnlineDPOConfig (docs: Configuration).")
    names = set(sgpo_field_names())
    for container in parser._action_groups:
        if container is group:
            continue
        for action in [a for a in container._group_actions if a.dest in names]:
            container._group_actions.remove(action)
            group._group_actions.append(action)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[SGPOScriptArguments, SGPOConfig, ModelConfig]:
    """Parse the command line (and ``--config`` file); the built-in world's defaults only when it is what runs.

    Whether it runs is read from the parsed arguments (no model and no data set, from any spelling of the flags or
    from the config file), so the first parse uses the real defaults. For the built-in world the arguments are parsed
    again with its defaults underneath: every flag and config value the user gave still wins.
    """
    argv = sys.argv[1:] if argv is None else argv
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    if uses_builtin_world(script_args, model_args):
        parser = make_parser()
        parser.set_defaults(**BUILTIN_DEFAULTS)
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
    return script_args, training_args, model_args


def uses_builtin_world(script_args: SGPOScriptArguments, model_args: ModelConfig) -> bool:
    """The built-in world runs when neither a model nor a data set was given."""
    return script_args.dataset_name is None and model_args.model_name_or_path is None


def load_tokenizer(model_args: ModelConfig, training_args: SGPOConfig) -> AutoTokenizer:
    """The tokenizer alone: enough to check the data against the chat template and the length budget."""
    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )


def load_model(model_args: ModelConfig, training_args: SGPOConfig) -> AutoModelForCausalLM:
    """Load the model as TRL's example scripts do (dtype, attention, quantization)."""
    quantization_config = get_quantization_config(model_args)
    model_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
        trust_remote_code=training_args.trust_remote_code,  # an SGPOConfig field in TRL 1.16, not a ModelConfig one
        # quantized weights must be placed on this process's device at load time
        device_map={"": PartialState().local_process_index} if quantization_config is not None else None,
        quantization_config=quantization_config,
    )
    return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **model_kwargs)


def _quality_table(before: dict, after: dict, regime: str) -> Table:
    table = Table(title=f"Held-out quality, built-in world ({regime} regime)")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for metric in ("sampled_exact_match", "exact_match", "partial_credit"):
        table.add_row(metric, f"{100 * before[metric]:.1f}%", f"{100 * after[metric]:.1f}%")
    return table


def _builtin_scores(model, tokenizer, dataset, temperature: float) -> dict[str, float]:
    """Held-out scores of the built-in world: exact match of sampled answers (4 per prompt, at the training
    temperature: the distribution SGPO trains, and the headline of benchmarks/quality.py), and of greedy answers."""
    from ..toy import evaluate_model, pass_at_k

    greedy = evaluate_model(model, tokenizer, dataset)
    sampled = pass_at_k(model, tokenizer, dataset, k=4, temperature=temperature)
    return {
        "sampled_exact_match": sampled["sample"],
        "exact_match": greedy["exact_match"],
        "partial_credit": greedy["partial_credit"],
    }


# What the checks before the model loads raise; the command line prints them as one line (`run`).
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ImportError)


class InputRefused(SystemExit):
    """A check before the model loads refused the run: the message says the problem and the fix."""


def main(argv: list[str] | None = None, one_line_errors: bool = False) -> dict:
    """Run SGPO; returns the held-out scores (built-in world) or the training metrics.

    Everything that can be checked without the model is checked first: options, output folder, data files, and the
    data against the tokenizer (formats, chat template, prompt lengths). With ``one_line_errors`` (the command line)
    such a refusal is printed as ``trl-sgpo: error: ...`` and exits with status 2, without a traceback; as a
    library call it raises the original exception.
    """
    try:
        script_args, training_args, model_args, data = _checked_inputs(argv)
    except INPUT_ERRORS as error:
        if not one_line_errors:
            raise
        if int(os.environ.get("RANK", "0")) == 0:  # under a launcher every process checks; one says it
            print(f"trl-sgpo: error: {error}", file=sys.stderr)
        _quiet_launcher()
        raise InputRefused(2) from error
    return _train(script_args, training_args, model_args, data)


def _checked_inputs(argv: list[str] | None) -> tuple:
    """Parse and check everything that needs no model; load the data and the tokenizer (not the model)."""
    script_args, training_args, model_args = parse_args(argv)
    if model_args.model_name_or_path and model_args.model_name_or_path.startswith("~"):  # a YAML recipe's ~/path
        model_args.model_name_or_path = os.path.expanduser(model_args.model_name_or_path)
    builtin = uses_builtin_world(script_args, model_args)
    check_options(script_args, training_args, model_args)
    apply_lora_rates(training_args, model_args.use_peft)
    if str(training_args.resume_from_checkpoint).lower() in ("true", "yes", "1"):  # `true`: the latest checkpoint
        training_args.resume_from_checkpoint = True
    # Before loading anything: never write over an earlier run.
    check_output_dir(
        training_args.output_dir, training_args.resume_from_checkpoint, training_args.overwrite_output_dir
    )

    if builtin:
        return script_args, training_args, model_args, None
    # The data first: a bad name or split fails in seconds, not after the model has loaded.
    train_dataset, eval_dataset = load_train_and_eval(
        script_args.dataset_name,
        script_args.eval_dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_test_split,
        script_args.dataset_config,
        script_args.dataset_streaming,
    )
    if training_args.eval_strategy == "no":
        eval_dataset = None
    check_eval_data(eval_dataset, script_args, training_args)
    tokenizer = load_tokenizer(model_args, training_args)
    training_args, train_dataset, eval_dataset = prepare_training_data(
        training_args, tokenizer, train_dataset, eval_dataset
    )
    return script_args, training_args, model_args, (train_dataset, eval_dataset, tokenizer)


def _quiet_launcher() -> None:
    """Under `accelerate launch` with one process, the launcher answers a child that exits with an error by printing
    the child's last lines again and a `CalledProcessError` traceback (about 20 lines) after the one-line refusal.
    Its SIGTERM handler exits quietly instead (status 143), so the refusal is the only thing printed."""
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1
    if not launched:
        return
    try:
        import psutil

        parent = psutil.Process(os.getppid())
        if any("accelerate" in part for part in parent.cmdline()[:3]):
            parent.send_signal(signal.SIGTERM)
    except Exception:  # the launcher's own error then follows the refusal: no worse than before
        return


def use_all_cores_under_accelerate(training_args) -> int | None:
    """`accelerate launch` starts its process with ``OMP_NUM_THREADS=1`` unless told otherwise, so a single CPU
    process would use one core of many. There (one process, on a CPU, the thread count accelerate's default),
    use every core and say so once; returns the thread count set, or None where nothing was changed."""
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set in every process accelerate launch starts
    one_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
    on_cpu = training_args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    cores = os.cpu_count() or 1
    if not (launched and one_process and on_cpu and os.environ.get("OMP_NUM_THREADS") == "1" and cores > 1):
        return None
    torch.set_num_threads(cores)
    logger.warning(
        "accelerate launch set OMP_NUM_THREADS=1 (its default), which would train on 1 of this CPU's %d cores: "
        "using all %d. To choose, pass --num_cpu_threads_per_process N to accelerate launch.",
        cores,
        cores,
    )
    return cores


def _train(script_args, training_args, model_args, data) -> dict:
    console = Console(soft_wrap=True)  # a saved path stays on one line, whatever the terminal width
    builtin = data is None
    if builtin:
        from ..toy import TOY_CHECKPOINT_DIR, TOY_IMPROVER_TEMPLATE, make_dataset, toy_checkpoint_metadata

        torch.set_num_threads(1)  # a 0.67M-parameter model runs faster on one thread than on contended cores
        if training_args.improver_template == SGPOConfig.improver_template:
            training_args.improver_template = TOY_IMPROVER_TEMPLATE
        if training_args.improver_instruction == SGPOConfig.improver_instruction:
            training_args.improver_instruction = TOY_IMPROVER_INSTRUCTION
        model = AutoModelForCausalLM.from_pretrained(TOY_CHECKPOINT_DIR)
        tokenizer = AutoTokenizer.from_pretrained(TOY_CHECKPOINT_DIR)
        regime = script_args.builtin_regime
        # The paper's regime: preference training on prompts and references of the start's own SFT set (its
        # references with their slips: the same rows the start was trained on).
        sft_data = toy_checkpoint_metadata()["sft_data"]
        train_dataset = make_dataset(
            regime,
            "train",
            script_args.builtin_train_prompts,
            seed=sft_data["seed"],
            reference_noise=sft_data.get("reference_noise", 0.0),
        )
        eval_dataset = make_dataset(regime, "test", script_args.builtin_eval_prompts, seed=0)
        before = _builtin_scores(model, tokenizer, eval_dataset, training_args.temperature)
        console.print(
            f"Built-in world, {regime} regime: {len(train_dataset)} training prompts, {len(eval_dataset)} held-out. "
            f"Before: sampled exact match {100 * before['sampled_exact_match']:.1f}%, greedy exact match "
            f"{100 * before['exact_match']:.1f}%"
        )
        eval_for_trainer = None
    else:
        train_dataset, eval_for_trainer, tokenizer = data
        use_all_cores_under_accelerate(training_args)
        model = load_model(model_args, training_args)
    ref_model = None
    if not builtin and deepspeed_stage(training_args) == 3 and not model_args.use_peft:
        # ZeRO-3 partitions the model as it loads, so the DPO reference cannot be copied from it: load it too.
        ref_model = load_model(model_args, training_args)
        logger.warning("DeepSpeed ZeRO-3: the DPO reference model is loaded a second time from --model_name_or_path.")

    trainer = SGPOTrainer(
        model=model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_for_trainer,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.dataset_name = script_args.dataset_name
    if builtin:  # one progress display: rich's instead of the default tqdm bar
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(RichProgressCallback())
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()

    saved = f"Model, tokenizer and model card saved to {os.path.abspath(training_args.output_dir)}"
    if not builtin:
        if trainer.is_world_process_zero():
            console.print(saved + (" (pushed to the Hub too)" if training_args.push_to_hub else ""))
        return result.metrics
    after = _builtin_scores(trainer.model, tokenizer, eval_dataset, training_args.temperature)
    console.print(_quality_table(before, after, regime))
    console.print(saved)
    return {"before": before, "after": after}


def run() -> None:
    """The `trl-sgpo` console command (and examples/sgpo.py): `main` with one-line errors, without its return value
    (a returned dict would be the exit status)."""
    try:
        main(one_line_errors=True)
    finally:
        _end_distributed()


def _end_distributed() -> None:
    """Tear the process group down before the interpreter does: under `accelerate launch` (DeepSpeed's ZeRO-3 on
    CPU, seen in CI) a rank left its collective threads to the interpreter's exit and aborted there ("terminate
    called without an active exception") after everything was saved; PyTorch asks for `destroy_process_group`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run()
