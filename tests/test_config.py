"""SGPOConfig: the TRL parent classes, command-line parsing, device-aware defaults and bad values."""

import dataclasses

import pytest
from trl import TrlParser
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_sgpo import SGPOConfig, SGPOTrainer
from trl_sgpo.config import DEFAULT_IMPROVER_TEMPLATE


SGPO_FIELDS = [
    "improver_template",
    "improver_target",
    "improver_alpha",
    "improver_drop_unchanged",
    "improver_filter_outliers",
    "improver_outlier_k",
    "improver_max_new_tokens",
    "improver_temperature",
    "improver_top_p",
    "pair_source",
    "improver_loss_weight",
    "chosen_nll_weight",
    "improver_warmup_steps",
    "improver_steps",
    "dpo_steps",
    "num_cycles",
    "sync_ref_model_each_dpo_phase",
]


def test_subclasses_trl_online_dpo():
    assert issubclass(SGPOTrainer, OnlineDPOTrainer)
    assert issubclass(SGPOConfig, OnlineDPOConfig)


def test_every_new_field_has_help_and_a_docstring_entry():
    fields = {f.name: f for f in dataclasses.fields(SGPOConfig)}
    for name in SGPO_FIELDS:
        assert fields[name].metadata.get("help"), name
        assert f"{name} (`" in SGPOConfig.__doc__, name


def test_fields_parse_from_the_command_line(tmp_path):
    (config,) = TrlParser((SGPOConfig,)).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--improver_target",
            "reference",
            "--improver_alpha",
            "0.25",
            "--pair_source",
            "spin",
            "--improver_warmup_steps",
            "3",
            "--improver_steps",
            "2",
            "--dpo_steps",
            "4",
            "--num_cycles",
            "5",
            "--improver_loss_weight",
            "0.5",
            "--chosen_nll_weight",
            "0.1",
            "--improver_filter_outliers",
            "false",
            "--improver_outlier_k",
            "3",
            "--improver_temperature",
            "0",
            "--improver_template",
            "P={prompt} R={response}",
            "--sync_ref_model_each_dpo_phase",
            "true",
        ]
    )
    assert (config.improver_target, config.improver_alpha, config.pair_source) == ("reference", 0.25, "spin")
    assert (config.improver_warmup_steps, config.improver_steps, config.dpo_steps, config.num_cycles) == (3, 2, 4, 5)
    assert (config.improver_loss_weight, config.chosen_nll_weight, config.improver_outlier_k) == (0.5, 0.1, 3.0)
    assert config.improver_filter_outliers is False and config.sync_ref_model_each_dpo_phase is True
    assert config.improver_temperature == 0.0 and config.improver_template == "P={prompt} R={response}"


def test_cpu_defaults_need_no_flags(tmp_path):
    config = SGPOConfig(output_dir=str(tmp_path))
    assert config.bf16 is False and config.gradient_checkpointing is False  # this test machine has no GPU
    assert config.improver_template == DEFAULT_IMPROVER_TEMPLATE
    assert SGPOConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True).bf16 is True  # explicit choice kept


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        ({"improver_alpha": 1.5}, ValueError, "improver_alpha must be in"),
        ({"improver_target": "copy"}, ValueError, "Unknown improver_target 'copy'"),
        ({"pair_source": "judge"}, ValueError, "Unknown pair_source 'judge'"),
        ({"loss_type": "hinge"}, ValueError, "Unknown loss_type 'hinge'"),
        ({"beta": -0.1}, ValueError, "beta must be > 0"),
        ({"improver_warmup_steps": 0, "improver_steps": 0, "dpo_steps": 0}, ValueError, "zero steps in every phase"),
        ({"improver_template": "no fields"}, ValueError, "has no {prompt} and {response}"),
        ({"improver_template": 3}, TypeError, "must be a string"),
        ({"reward_model_path": "rm"}, ValueError, "SGPO uses no reward"),
        ({"improver_outlier_k": -1.0}, ValueError, "improver_filter_outliers=False"),
        ({"dpo_steps": -1}, ValueError, "dpo_steps must be >= 0"),
        ({"improver_temperature": -0.5}, ValueError, "0 = greedy"),
    ],
)
def test_bad_values_are_rejected_with_the_fix(tmp_path, overrides, error, message):
    with pytest.raises(error, match=message.replace("{", r"\{").replace("}", r"\}")):
        SGPOConfig(output_dir=str(tmp_path), **overrides)


def test_a_callable_template_is_recorded_by_name(tmp_path):
    def my_template(prompt, response):
        return f"{prompt} -> {response}"

    config = SGPOConfig(output_dir=str(tmp_path), improver_template=my_template)
    assert config.to_dict()["improver_template"].endswith("my_template>")
    config.to_json_string()  # serialisable for trackers and checkpoints
