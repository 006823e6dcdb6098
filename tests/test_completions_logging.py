"""TRL's conventions for what a run shows: `log_completions` sample tables, and the same metric keys on every line."""

import importlib.machinery
import math
import sys
import types

from trl_sgpo import SGPOTrainer
from trl_sgpo.records import Completion
from trl_sgpo.run.sample_table import SGPOSampleTableCallback, last_turns, sample_rows

from .helpers import WORD, conversational_dataset, make_config, rule_sampler, tiny_model


DPO_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen")


def _trainer(tmp_path, tokenizer, **overrides) -> SGPOTrainer:
    settings = dict(improver_warmup_steps=1, improver_steps=0, logging_steps=1, max_steps=3)
    settings.update(overrides)
    return SGPOTrainer(
        model=tiny_model(tokenizer),
        args=make_config(tmp_path, **settings),
        train_dataset=conversational_dataset(8),
        processing_class=tokenizer,
    )


def test_log_completions_prints_the_rows_of_each_logged_step_with_the_reference(tmp_path, tokenizer, capsys):
    trainer = _trainer(tmp_path, tokenizer, log_completions=True, num_completions_to_print=2)
    trainer.sampler = rule_sampler(tokenizer)
    trainer.train()
    out = capsys.readouterr().out
    for step, phase in ((1, "improver"), (2, "dpo"), (3, "dpo")):
        assert f"SGPO samples, step {step} ({phase} phase)" in out
    assert "reference" in out and "user: reverse" in out
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, SGPOSampleTableCallback))
    assert callback.tables_shown == 3 and len(callback.last_samples) == 2
    row = callback.last_samples[0]
    word = WORD.findall(row["prompt"])[0]
    assert row["reference"] == word[::-1] and row["response"] == word[::-1] + "x"  # the row's own reference


def test_an_improver_step_labels_its_third_column_as_the_target(tmp_path, tokenizer, capsys, monkeypatch):
    """In improver steps the rows show the training target, not a rewrite: the column says so."""
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the width when the table prints: titles on one line
    trainer = _trainer(tmp_path, tokenizer, log_completions=True, num_completions_to_print=2)
    trainer.sampler = rule_sampler(tokenizer)
    trainer.train()
    tables = capsys.readouterr().out.split("SGPO samples, step ")[1:]
    improver = [table for table in tables if "(improver phase)" in table]
    dpo = [table for table in tables if "(dpo phase)" in table]
    assert improver and dpo
    assert all("improver target" in table and "improved response" not in table for table in improver)
    assert all("improved response" in table and "improver target" not in table for table in dpo)


def test_without_log_completions_no_table_is_shown(tmp_path, tokenizer, capsys):
    trainer = _trainer(tmp_path, tokenizer)
    trainer.sampler = rule_sampler(tokenizer)
    trainer.train()
    assert "SGPO samples" not in capsys.readouterr().out
    assert not any(isinstance(c, SGPOSampleTableCallback) for c in trainer.callback_handler.callbacks)


def test_a_conversational_prompt_shows_its_last_three_turns():
    turns = [{"role": role, "content": f"t{i}"} for i, role in enumerate(["system", "user", "assistant", "user"])]
    assert last_turns(turns) == "(1 earlier message)\nuser: t1\nassistant: t2\nuser: t3"
    assert last_turns(turns[1:]) == "user: t1\nassistant: t2\nuser: t3"
    assert last_turns("plain text") == "plain text"


def test_the_table_goes_to_trackio_as_completions(monkeypatch):
    logged = []
    trackio = types.ModuleType("trackio")
    trackio.__spec__ = importlib.machinery.ModuleSpec("trackio", None)
    trackio.Table = lambda dataframe: dataframe
    trackio.log = logged.append
    monkeypatch.setitem(sys.modules, "trackio", trackio)
    samples = [{"phase": "dpo", "prompt": "p", "response": "r", "improved": "i", "reference": "f", "kept": "kept"}]
    SGPOSampleTableCallback._log_to_trackers(types.SimpleNamespace(report_to=["trackio"]), samples, step=7)
    (entry,) = logged
    frame = entry["completions"]
    assert frame.to_dict("records") == [{"step": 7, **samples[0]}]
    SGPOSampleTableCallback._log_to_trackers(types.SimpleNamespace(report_to=["tensorboard"]), samples, step=8)
    assert len(logged) == 1  # only the trackers report_to names


def _identical_on_step(tokenizer, trainer, no_pair_steps: set[int]):
    """The improver repeats the draft (every pair dropped as identical) on the given global steps."""
    sample = rule_sampler(tokenizer)

    def sampler(model, prompt_ids, prompt_mask, role, cache=None, **kwargs):
        step = trainer.state.global_step + 1
        return sample(model, prompt_ids, prompt_mask, "policy" if step in no_pair_steps else role)

    return sampler


def test_a_dpo_step_without_pairs_keeps_its_keys_as_nan(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    trainer.sampler = _identical_on_step(tokenizer, trainer, no_pair_steps={2})
    trainer.train()
    dpo_logs = [log for log in trainer.state.log_history if log.get("sgpo/phase") == 1.0]
    assert [log["step"] for log in dpo_logs] == [2, 3]
    empty, full = dpo_logs
    assert empty["sgpo/pairs_kept"] == 0 and full["sgpo/pairs_kept"] == 1
    for key in DPO_KEYS:
        assert math.isnan(empty[key]) and math.isfinite(full[key]), key


def test_a_logging_window_averages_the_steps_that_kept_pairs(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, logging_steps=2, max_steps=4)
    trainer.sampler = _identical_on_step(tokenizer, trainer, no_pair_steps={3})
    trainer.train()
    window = [log for log in trainer.state.log_history if log.get("step") == 4][0]  # steps 3 (no pair) and 4
    assert window["sgpo/pairs_kept"] == 0.5
    for key in DPO_KEYS:
        assert math.isfinite(window[key]), key


def test_the_sample_rows_keep_the_kept_pairs_first_and_their_references(tokenizer):
    texts = ["a", "b", "c"]
    completions = [Completion(tokenizer(t, add_special_tokens=False).input_ids, True) for t in texts]
    verdicts, references = ["empty", "kept", "kept"], ["ra", "rb", "rc"]
    rows = sample_rows("dpo", texts, completions, completions, verdicts, tokenizer.decode, 2, references)
    assert [(row["prompt"], row["reference"]) for row in rows] == [("b", "rb"), ("c", "rc")]
