"""The built-in verifiable world: tasks, splits, checker, metric module and the shipped checkpoint (all offline)."""

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl.data_utils import is_conversational

from trl_sgpo.toy.build_checkpoint import (
    HELD_OUT,
    BuildConfig,
    build_checkpoint,
    build_fingerprint,
    improver_rows,
    initial_model,
    sft_dataset,
    weight_summary,
)
from trl_sgpo.toy.checker import check_answer, detect_style, parse_parts
from trl_sgpo.toy.model import TOY_CHECKPOINT_DIR, load_toy_model, toy_checkpoint_metadata
from trl_sgpo.toy.tasks import (
    PLAIN_OPS,
    REGIMES,
    SHORT_OPS,
    SPLITS,
    Operation,
    format_answer,
    generate_examples,
    split_of,
)
from trl_sgpo.toy.tokenizer import build_char_tokenizer
from trl_sgpo.toy.world import (
    TOY_IMPROVER_INSTRUCTION,
    TOY_IMPROVER_TEMPLATE,
    TOY_METRIC_PATH,
    evaluate_model,
    generate_completions,
    make_dataset,
    score,
    slip,
)

from .helpers import FLOAT32_REASSOCIATION_RTOL


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_model():
    return load_toy_model()


# Tasks and splits


@pytest.mark.parametrize(
    "operation, answer",
    [
        (Operation("reverse", ("abc",)), "cba"),
        (Operation("sort", ("dcab",)), "abcd"),
        (Operation("upper", ("xyz",)), "XYZ"),
        (Operation("add", ("47", "58")), "105"),
        (Operation("count", ("a", "banana")), "3"),
        (Operation("count", ("z", "banana")), "0"),
        (Operation("repeat", ("3", "ab")), "ababab"),
        (Operation("shift", ("xyz",)), "yza"),
        (Operation("devowel", ("banana",)), "bnn"),
        (Operation("length", ("banana",)), "6"),
        (Operation("vowels", ("banana",)), "3"),
        (Operation("consonants", ("banana",)), "3"),
        (Operation("consonants", ("strengths",)), "8"),
    ],
)
def test_operation_answers(operation, answer):
    assert operation.answer == answer


def test_splits_share_no_argument_string():
    keys = {}
    for split in SPLITS:
        keys[split] = set()
        for regime in REGIMES:
            for example in generate_examples(regime, split, 400, seed=3):
                for operation in example.operations:
                    assert split_of(operation.split_key) == split
                    keys[split].add(operation.split_key)
                    if operation.name != "add":
                        keys[split].add(operation.args[-1])  # the word itself
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]


def test_add_split_key_is_unordered():
    assert Operation("add", ("3", "45")).split_key == Operation("add", ("45", "3")).split_key


def test_generation_is_deterministic_from_seed():
    first = make_dataset("shifted", "train", 50, seed=7).to_list()
    assert first == make_dataset("shifted", "train", 50, seed=7).to_list()
    assert first != make_dataset("shifted", "train", 50, seed=8).to_list()


def test_regimes_have_the_promised_shape():
    plain = generate_examples("plain", "test", 800)
    assert {e.task for e in plain} == set(PLAIN_OPS)
    assert all(len(e.answer_parts) == 1 and len(e.answer("policy")) <= 24 for e in plain)
    assert all(e.answer("policy") == e.answer("reference") for e in plain)
    assert len({e.prompt for e in plain}) == 800
    shifted = generate_examples("shifted", "test", 800)
    assert all(len(e.answer_parts) == 3 for e in shifted)
    assert all(e.answer("policy") != e.answer("reference") for e in shifted)
    short = generate_examples("short", "test", 800)
    assert all(len(e.answer_parts) == 2 and all(part.isdigit() for part in e.answer_parts) for e in short)
    assert {op.name for e in short for op in e.operations} == set(SHORT_OPS)
    assert all(len({op.name for op in e.operations}) == 2 for e in short)


def test_dataset_is_trl_conversational_prompt_completion():
    dataset = make_dataset("shifted", "validation", 8)
    row = dataset[0]
    assert is_conversational(row)
    assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    parts = json.loads(row["answer_parts"])
    assert row["completion"][0]["content"] == " | ".join(parts)  # the reference form by default
    policy_row = make_dataset("shifted", "validation", 8, reference_style="policy")[0]
    assert policy_row["prompt"] == row["prompt"]
    assert policy_row["completion"][0]["content"].startswith(f"a) {parts[0]}; b) ")
    assert set(dataset.column_names) == {"prompt", "completion", "task", "regime", "answer_parts", "operations"}


def test_improver_template_is_short_and_has_fields():
    assert TOY_IMPROVER_TEMPLATE.format(prompt="P", response="R").count("P") == 1
    assert "{response}" in TOY_IMPROVER_TEMPLATE and len(TOY_IMPROVER_TEMPLATE) < 40


# Checker


GOLD = ["cba", "ABC", "12"]


@pytest.mark.parametrize(
    "text, exact, partial, style",
    [
        ("a) cba; b) ABC; c) 12", True, 1.0, "policy"),
        ("cba | ABC | 12", True, 1.0, "reference"),
        ("  cba | ABC | 12\n", True, 1.0, "reference"),
        ("a) cba | ABC; c) 12", True, 1.0, "other"),  # half way from one form to the other: same content
        ("a) cba; b) ABD; c) 12", False, 2 / 3, "policy"),
        ("cbA | ABC | 13", False, 1 / 3, "reference"),
        ("cba | ABC", False, 2 / 3, "reference"),
        ("cba | ABC | 12 | 7", False, 3 / 4, "reference"),  # extra parts count as wrong
        ("ABC | cba | 12", False, 1 / 3, "reference"),  # parts are compared by position
        ("", False, 0.0, "other"),
    ],
)
def test_check_answer_by_content(text, exact, partial, style):
    check = check_answer(text, GOLD)
    assert check.exact_match is exact
    assert check.partial_credit == pytest.approx(partial)
    assert detect_style(text) == style


def test_check_single_part_answers():
    assert check_answer("cba", ["cba"]).exact_match
    assert check_answer("cba</s>", ["cba"]).partial_credit == 0.0
    assert check_answer("cbaa", ["cba"]).partial_credit == 0.0


def test_both_forms_parse_back_to_the_parts():
    for example in generate_examples("shifted", "train", 100) + generate_examples("plain", "train", 40):
        for style in ("policy", "reference"):
            assert parse_parts(format_answer(example.answer_parts, style)) == example.answer_parts


def test_score_reports_per_task_operation_and_style():
    rows = make_dataset("shifted", "validation", 20).to_list() + make_dataset("plain", "validation", 16).to_list()
    references = [row["completion"][0]["content"] for row in rows]
    result = score(rows, references)
    assert result["exact_match"] == 1.0 and result["partial_credit"] == 1.0
    assert result["style"] == {"policy": 0.0, "reference": 1.0, "other": 0.0}
    assert set(result["per_task"]) == {"multi", *PLAIN_OPS}
    # Break the first part of every shifted answer: 2/3 partial credit there, and its operation scores lower.
    broken = ["x" + ref if row["regime"] == "shifted" else ref for row, ref in zip(rows, references)]
    result = score(rows, broken)
    assert result["per_task"]["multi"]["exact_match"] == 0.0
    assert result["per_task"]["multi"]["partial_credit"] == pytest.approx(2 / 3)
    assert result["per_task"]["reverse"]["exact_match"] == 1.0
    with pytest.raises(ValueError):
        score(rows, references[:-1])


# Metric module


def test_metric_module_loads_offline_by_path_and_agrees_with_score():
    rows = make_dataset("shifted", "test", 30).to_list()
    predictions = [
        row["completion"][0]["content"] if i % 3 else "a) x; b) y; c) " + json.loads(row["answer_parts"])[2]
        for i, row in enumerate(rows)
    ]
    references = [row["completion"][0]["content"] for row in rows]
    script = (
        "import evaluate, json, sys; args = json.load(sys.stdin); "
        "metric = evaluate.load(args['path']); "
        "print(json.dumps(metric.compute(predictions=args['predictions'], references=args['references'])))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    payload = json.dumps({"path": TOY_METRIC_PATH, "predictions": predictions, "references": references})
    output = subprocess.run(
        [sys.executable, "-c", script], input=payload, capture_output=True, text=True, env=env, check=True
    )
    metric_result = json.loads(output.stdout.strip().splitlines()[-1])
    expected = score(rows, predictions)
    assert metric_result["exact_match"] == pytest.approx(expected["exact_match"])
    assert metric_result["partial_credit"] == pytest.approx(expected["partial_credit"])
    assert 0.0 < expected["exact_match"] < 1.0


# The shipped checkpoint


def test_shipped_tokenizer_matches_the_built_one(toy_model):
    _, tokenizer = toy_model
    messages = [{"role": "user", "content": "reverse abc"}, {"role": "assistant", "content": "cba"}]
    built = build_char_tokenizer()
    assert tokenizer.apply_chat_template(messages, tokenize=False) == built.apply_chat_template(
        messages, tokenize=False
    )
    text = built.apply_chat_template(messages, tokenize=False)
    assert tokenizer(text).input_ids == built(text).input_ids
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"


def test_shipped_checkpoint_scores_as_recorded(toy_model):
    model, tokenizer = toy_model
    metadata = toy_checkpoint_metadata()
    regime = metadata["sft_data"]["regime"]
    assert metadata["held_out"] == HELD_OUT
    dataset = make_dataset(regime, HELD_OUT["split"], HELD_OUT["num_examples"], seed=HELD_OUT["seed"])
    result = evaluate_model(model, tokenizer, dataset)
    recorded = metadata["scores"][regime]
    assert result["exact_match"] == pytest.approx(recorded["exact_match"], abs=0.02)
    assert result["partial_credit"] == pytest.approx(recorded["partial_credit"], abs=0.02)
    # Deliberately imperfect, as the SFT model of the paper: its greedy answers miss some counts, and its samples
    # copy the slips of its references (the headroom of samples is measured by benchmarks/quality.py).
    assert 0.5 <= recorded["exact_match"] <= 0.9


def test_shipped_checkpoint_stopped_at_its_validation_plateau():
    """The start is the paper's SFT model: the last evaluations of its SFT run gained nothing over the best one."""
    metadata = toy_checkpoint_metadata()
    config, trace = metadata["build_config"], metadata["validation"]["trace"]
    best = max(point["validation_exact_match"] for point in trace)
    assert metadata["validation"]["best_exact_match"] == best
    assert trace[-1]["step"] < config["max_steps"]  # stopped by the plateau, not by the step budget
    after_best = [p for p in trace if p["step"] > metadata["best_step"]]
    assert len(after_best) == config["patience"]
    assert all(p["validation_exact_match"] < best + config["min_delta"] for p in after_best)


def test_sft_set_is_the_benchmarks_training_data():
    metadata = toy_checkpoint_metadata()
    config = BuildConfig(**metadata["build_config"])
    rows = sft_dataset(config)
    assert len(rows) == metadata["sft_data"]["num_examples"] == config.sft_examples
    data = metadata["sft_data"]
    noise = data["reference_noise"]
    expected = make_dataset(config.regime, "train", config.sft_examples, seed=data["seed"], reference_noise=noise)
    assert rows[:50] == expected[:50]


def test_reference_noise_slips_references_but_never_the_gold():
    clean = make_dataset("short", "train", 2000, seed=3)
    noisy = make_dataset("short", "train", 2000, seed=3, reference_noise=0.3)
    assert noisy["prompt"] == clean["prompt"] and noisy["answer_parts"] == clean["answer_parts"]
    slipped = 0
    for row in noisy:
        gold = [int(part) for part in json.loads(row["answer_parts"])]
        written = [int(part) for part in row["completion"][0]["content"].split(" | ")]
        differences = [abs(a - b) for a, b in zip(gold, written)]
        assert sorted(differences) in ([0, 0], [0, 1])  # at most one part, off by exactly one
        slipped += sum(differences)
    assert 0.27 <= slipped / len(noisy) <= 0.33
    assert noisy.to_list() == make_dataset("short", "train", 2000, seed=3, reference_noise=0.3).to_list()
    with pytest.raises(ValueError, match="reference_noise must be in"):
        make_dataset("short", "train", 10, reference_noise=1.5)


def test_slip_moves_one_numeric_part_by_one_and_never_below_zero():
    rng = random.Random(0)
    for _ in range(200):
        assert slip(["0", "0"], rng) in (["1", "0"], ["0", "1"])
        slipped = slip(["abc", "5"], rng)
        assert slipped[0] == "abc" and slipped[1] in ("4", "6")
    assert slip(["cba", "XY"], rng) == ["cba", "XY"]  # nothing numeric: unchanged


def test_improver_rows_teach_the_role_on_synthetic_drafts():
    config = BuildConfig(sft_examples=400, improver_share=0.5)
    rows = improver_rows(config)
    references = sft_dataset(config)
    assert len(rows) == 200
    drafts_off = 0
    for index, ((prompt, target), reference) in enumerate(zip(rows, references)):
        question = reference["prompt"][-1]["content"]
        assert target == reference["completion"][0]["content"]  # the SFT reference, slips included
        if index % 2 == 0:  # the single-turn template ...
            draft = prompt[0]["content"].removeprefix(question + "\ndraft: ").removesuffix("\nimprove:")
            assert prompt == [
                {"role": "user", "content": TOY_IMPROVER_TEMPLATE.format(prompt=question, response=draft)}
            ]
        else:  # ... and the next turn of the conversation, row by row
            draft = prompt[1]["content"]
            assert prompt == [
                *reference["prompt"],
                {"role": "assistant", "content": draft},
                {"role": "user", "content": TOY_IMPROVER_INSTRUCTION},
            ]
        drafts_off += draft != " | ".join(json.loads(reference["answer_parts"]))
    assert 0.4 <= drafts_off / len(rows) <= 0.6  # half of the drafts carry a slip


def test_batched_generation_matches_one_by_one(toy_model):
    model, tokenizer = toy_model
    prompts = [row["prompt"] for row in make_dataset("plain", "validation", 6)]
    prompts += [row["prompt"] for row in make_dataset("shifted", "validation", 6)]
    batched = generate_completions(model, tokenizer, prompts, batch_size=12)
    assert batched == generate_completions(model, tokenizer, prompts, batch_size=1)


def test_checkpoint_dir_is_shipped_as_package_data():
    assert {"model.safetensors", "config.json", "tokenizer.json", "world.json"} <= {
        path.name for path in TOY_CHECKPOINT_DIR.iterdir()
    }


def _float32_ulp(x: float) -> float:
    """The spacing of float32 numbers at ``|x|``."""
    return 2.0 ** (math.floor(math.log2(abs(x))) - 23)


def _assert_initial_weights_match(new: dict, old: dict) -> None:
    """Initial weights equal up to torch's normal sampler, which is not bit-exact across CPU kernels.

    torch draws normals with Box-Muller; its vectorized (AVX2) kernel and its scalar one compute log, cos and sin in
    float32 differently, so a weight can differ by a few float32 ulps between machines (measured here with
    ``ATEN_CPU_CAPABILITY=default`` against ``avx2``: at most 6 ulps of a tensor's largest element). The tolerance,
    64 such ulps, is 10x that; a different seed or initialisation moves a weight by about its standard deviation,
    ~1e6 ulps. The sum and the sum of squares may each move by the elements' tolerance, summed (Cauchy-Schwarz).
    """
    assert new.keys() == old.keys()
    for name, expected in old.items():
        actual, numel = new[name], expected["numel"]
        assert actual["numel"] == numel, name
        bound = 6 * math.sqrt(expected["sum_of_squares"] / numel)  # above every |weight| of a normal draw this size
        atol = 64 * _float32_ulp(bound)
        assert actual["head"] == pytest.approx(expected["head"], rel=0, abs=atol), name
        assert actual["sum"] == pytest.approx(expected["sum"], rel=0, abs=numel * atol), name
        squares = 2 * math.sqrt(numel * expected["sum_of_squares"]) * atol + numel * atol**2
        assert actual["sum_of_squares"] == pytest.approx(expected["sum_of_squares"], rel=0, abs=squares), name


# The first step's loss and gradient norm, in float32: what another machine's kernels change is the order of sums
# (see FLOAT32_REASSOCIATION_RTOL in helpers.py; the longest here: the 256 MLP features, a batch of 64 rows x ~40
# tokens).
FIRST_STEP_RTOL = FLOAT32_REASSOCIATION_RTOL


@pytest.mark.slow
@pytest.mark.timeout(900)  # about 40 s: encodes the 96,000 training rows
def test_a_rebuild_from_the_seed_starts_exactly_as_the_shipped_build():
    """The shipped build's start is reproducible on any machine: its rows, batch order, initial weights, first step.

    Only what is exact by construction is compared exactly (the encoded SFT and improver rows, the batch order of
    the first 400 steps: pure Python); the initial weights and the first update with tolerances derived above. The
    trajectory after many Adam steps is not compared: rounding differences between machines grow until two runs of
    the same seed part (one machine's rebuild read 0.44 validation exact match at step 400, the shipped trace 0.3825).
    """
    shipped = toy_checkpoint_metadata()
    rebuilt = build_fingerprint(BuildConfig(**shipped["build_config"]))
    recorded = shipped["fingerprint"]
    assert rebuilt["sft_rows_sha256"] == recorded["sft_rows_sha256"]
    assert rebuilt["batch_order_steps"] == recorded["batch_order_steps"]
    assert rebuilt["batch_order_sha256"] == recorded["batch_order_sha256"]
    _assert_initial_weights_match(rebuilt["initial_weights"], recorded["initial_weights"])
    for key in ("loss", "grad_norm"):
        assert rebuilt["first_step"][key] == pytest.approx(recorded["first_step"][key], rel=FIRST_STEP_RTOL), key


def test_initial_weight_check_tells_another_seed_apart():
    """The weights' tolerance is far below what a different initialisation changes, and admits a few ulps."""
    config = BuildConfig(hidden_size=32, num_layers=1)
    tokenizer = build_char_tokenizer()

    def summary(seed: int, nudge_ulps: int = 0) -> dict:
        state = initial_model(dataclasses.replace(config, seed=seed), tokenizer).state_dict()
        if nudge_ulps:  # what another CPU kernel does: every weight a few ulps off
            state = {name: t + nudge_ulps * torch.finfo(t.dtype).eps * t.abs().max() for name, t in state.items()}
        return weight_summary(state)

    _assert_initial_weights_match(summary(0, nudge_ulps=4), summary(0))
    with pytest.raises(AssertionError):
        _assert_initial_weights_match(summary(1), summary(0))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_build_records_its_fingerprint_and_stops_at_its_plateau(tmp_path):
    """A small build end to end: it writes the fingerprint of its own start (same process: exact) and a trace."""
    config = BuildConfig(sft_examples=400, max_steps=30, eval_every=10, patience=1, min_delta=1.0)
    metadata = build_checkpoint(tmp_path, config, log=False)
    assert metadata["fingerprint"] == build_fingerprint(config)
    assert [point["step"] for point in metadata["validation"]["trace"]] == [10, 20]  # no second gain of 1.0
    assert json.loads((tmp_path / "world.json").read_text())["fingerprint"] == metadata["fingerprint"]
    assert load_toy_model(tmp_path)[0].num_parameters() == metadata["num_parameters"]
