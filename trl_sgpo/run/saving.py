"""What `SGPOTrainer` writes to disk and to the Hub, as a mixin over `transformers.Trainer`'s methods: the re-synced
reference model in checkpoints, the SGPO model card, and Hub errors that say what was kept locally and what to do."""

import os

from datasets import IterableDataset
from safetensors.torch import load_model, save_model
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .model_card import (
    adapter_front_matter,
    config_section,
    describe_sources,
    is_hub_dataset,
    quick_start_prompt,
    summary_section,
)


REF_MODEL_FILE = "sgpo_ref_model.safetensors"

logger = logging.get_logger(__name__)


class SavingMixin:
    """A part of `SGPOTrainer`: needs its ``ref_model``, ``dataset_name``, ``run_summary``, ``train_dataset`` and
    ``args`` (an `SGPOConfig`)."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # A re-synced reference model is state: a run resumed mid-DPO-phase needs the one synced at the phase start.
        if self.args.sync_ref_model_each_dpo_phase and self.ref_model is not None and self.is_world_process_zero():
            folder = os.path.join(self._get_output_dir(trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            save_model(self.accelerator.unwrap_model(self.ref_model), os.path.join(folder, REF_MODEL_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        ref_file = os.path.join(resume_from_checkpoint, REF_MODEL_FILE)
        if self.ref_model is not None and os.path.isfile(ref_file):
            load_model(self.accelerator.unwrap_model(self.ref_model), ref_file)

    def create_model_card(
        self, model_name: str | None = None, dataset_name: str | None = None, tags: str | list[str] | None = None
    ) -> None:
        """TRL's model card (tags `trl` and `sgpo`, the SGPO citation), plus a table of this run's SGPO settings."""
        dataset_name = dataset_name or self.dataset_name
        hub_dataset = dataset_name if is_hub_dataset(dataset_name) else None  # a local file has no Hub page to link
        super().create_model_card(model_name=model_name, dataset_name=hub_dataset, tags=tags)
        if not self.is_world_process_zero():
            return
        from .. import __version__

        path = os.path.join(self.args.output_dir, "README.md")
        with open(path, encoding="utf-8") as handle:
            card = handle.read()
        unwrapped = self.accelerator.unwrap_model(self.model)
        model_path = getattr(unwrapped.config, "_name_or_path", "")
        card = describe_sources(card, model_path, dataset_name, self.args.output_dir)
        if hasattr(unwrapped, "peft_config"):  # an adapter: PEFT's card fields, its base model named
            card = adapter_front_matter(card, model_path if is_hub_dataset(model_path) else None)
        if self.train_dataset is not None and not isinstance(self.train_dataset, IterableDataset):
            card = quick_start_prompt(card, self.train_dataset[0]["prompt"])
        figures = self.run_summary.figures
        section = summary_section(figures) + config_section(self.args, __version__, figures.get("step1_steps"))
        card = card.replace("## Citations", section + "## Citations", 1) if "## Citations" in card else card + section
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(card)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        try:
            super().init_hf_repo(token=token, private=private)
        except Exception as error:  # network, token or permission: say which repo and what to do
            raise RuntimeError(
                f"Could not create or reach the Hub repo {self.args.hub_model_id or self.args.output_dir!r}: "
                f"{type(error).__name__}: {error}. Check the network, HF_ENDPOINT and your token (`hf auth login`), "
                "or train without --push_to_hub and upload the saved output_dir later."
            ) from error

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs):
        """Upload the model, tokenizer and model card; on failure the local save in `output_dir` is kept."""
        kwargs.setdefault("dataset_name", self.dataset_name)
        try:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        except Exception as error:
            raise RuntimeError(
                f"Pushing to the Hub failed ({type(error).__name__}: {error}). The model, tokenizer and model card "
                f"are saved in {self.args.output_dir!r}; fix the network or token and call `trainer.push_to_hub()` "
                f"again, or upload that folder with `hf upload`."
            ) from error

    def _merge_step1_adapter(self) -> None:
        """Step 1 alone under PEFT (`improver_warmup_only`): merge the adapter into the weights before the final
        save, so that Step 2 runs load an ordinary model whose adapter-free self is their DPO reference."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if not (self.args.improver_warmup_only and hasattr(unwrapped, "merge_and_unload")):
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            logger.warning(
                "improver_warmup_only under DeepSpeed or FSDP: the adapter is saved unmerged; merge it "
                "(`PeftModel.merge_and_unload`) before starting Step 2 from it."
            )
            return
        self.model = self.model_wrapped = unwrapped.merge_and_unload()
        logger.warning(
            "Step 1 alone: the LoRA adapter is merged into the saved model, so Step 2 runs start from this folder "
            "(--model_name_or_path <folder> --improver_warmup_steps 0, with a new adapter under --use_peft)."
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model and tokenizer, and (outside checkpoints) the SGPO model card beside them; a Step-1-only
        run under PEFT saves its adapter merged (`_merge_step1_adapter`)."""
        if not _internal_call:
            self._merge_step1_adapter()
        super().save_model(output_dir, _internal_call)
        if not _internal_call and self.is_world_process_zero():
            self.create_model_card(model_name=os.path.basename(os.path.normpath(output_dir or self.args.output_dir)))
            card = os.path.join(self.args.output_dir, "README.md")
            if output_dir and os.path.abspath(output_dir) != os.path.abspath(self.args.output_dir):
                os.replace(card, os.path.join(output_dir, "README.md"))
