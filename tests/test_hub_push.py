"""`push_to_hub` end to end against a fake Hub on 127.0.0.1 (`tests/fake_hub.py`); never reaches huggingface.co."""

import huggingface_hub.constants as hub_constants
import pytest
from safetensors.torch import load as load_safetensors

from trl_sgpo import SGPOTrainer
from trl_sgpo.cli.command import parse_args

from .fake_hub import FakeHub, closed_port_url, point_hub_at
from .helpers import conversational_dataset, make_config, tiny_model


TOKEN = "hf_fake_write_token"
REPO_ID = "me/sgpo-tiny"
BASE_MODEL = "me/tiny-base"
DATASET = "me/prompts"
PUSHED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "README.md")


@pytest.fixture
def hub():
    fake = FakeHub(user="me").start()
    yield fake
    fake.stop()


def trained(tmp_path, tokenizer, **overrides) -> SGPOTrainer:
    """One SGPO step on a tiny model whose base is named like a Hub model; the data set is named for the card."""
    model = tiny_model(tokenizer)
    model.config._name_or_path = BASE_MODEL  # as if loaded from the Hub: the card names it as the base model
    trainer = SGPOTrainer(
        model=model,
        args=make_config(tmp_path, max_steps=1, **overrides),
        train_dataset=conversational_dataset(4),
        processing_class=tokenizer,
    )
    trainer.dataset_name = DATASET
    trainer.train()
    return trainer


def assert_sgpo_card(card: str) -> None:
    assert "- trl" in card and "- sgpo" in card  # tags
    assert f"base_model: {BASE_MODEL}" in card
    assert f"datasets: {DATASET}" in card and f"(https://huggingface.co/datasets/{DATASET})" in card
    assert "## SGPO configuration" in card and "| `pair_source` | `sgpo` |" in card and "| `max_steps` | `1` |" in card
    assert "- Transformers:" in card and "- TRL:" in card and "- Pytorch:" in card  # framework versions
    assert "@article{lee2025sgpo" in card


def snapshot(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}


# ---------------------------------------------------------------- a push that works


@pytest.mark.parametrize("transfer", ["default", "lfs_basic"])
def test_push_to_hub_uploads_weights_config_tokenizer_and_card(tmp_path, tokenizer, hub, monkeypatch, transfer):
    # "default": the client as installed (hf_xet present: streamed upload; every file is committed inline).
    # "lfs_basic": Xet off, as without hf_xet; the weights go through the LFS batch API's basic transfer.
    if transfer == "lfs_basic":
        hub.lfs_suffixes = (".safetensors",)
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    point_hub_at(monkeypatch, hub.url, token="hf_env_token_unused")
    trainer = trained(tmp_path, tokenizer, push_to_hub=True, hub_model_id=REPO_ID, hub_token=TOKEN)
    # The repo was created when the trainer was built, under the requested id.
    assert [(repo["organization"], repo["name"]) for repo in hub.created_repos] == [("me", "sgpo-tiny")]
    assert trainer.hub_model_id == REPO_ID

    commit = trainer.push_to_hub()

    assert not hub.unknown_requests and not hub.handler_errors, hub.describe()
    assert hub.tokens_seen == {TOKEN}  # `hub_token` is used, not the environment's token
    files = hub.files(REPO_ID)
    assert set(PUSHED_FILES) <= set(files), sorted(files)
    assert hub.commits[-1].summary == "End of training" and commit.oid == hub.commits[-1].oid
    output_dir = tmp_path / "out"
    for name in PUSHED_FILES:
        assert files[name] == (output_dir / name).read_bytes(), name
    weights = load_safetensors(files["model.safetensors"])
    trained_weights = trainer.model.state_dict()
    assert weights and all((weights[name] == trained_weights[name]).all() for name in weights)
    assert_sgpo_card(files["README.md"].decode())
    if transfer == "default":
        assert not hub.lfs_batches  # no LFS and no Xet: the files went inline in the commit
    if transfer == "lfs_basic":
        assert hub.lfs_batches and hub.lfs_batches[0]["transfers"][0] == "basic"
        assert files["model.safetensors"] in hub.lfs_objects.values()
        assert ("PUT", "/_lfs/upload/" + next(iter(hub.lfs_objects))) in hub.requests


def test_save_model_then_push_to_hub_as_the_command_line_does(tmp_path, tokenizer, hub, monkeypatch):
    point_hub_at(monkeypatch, hub.url, token=TOKEN)
    trainer = trained(tmp_path, tokenizer, push_to_hub=True, hub_model_id=REPO_ID)  # token from HF_TOKEN
    output_dir = str(tmp_path / "out")
    trainer.save_model(output_dir)  # with push_to_hub=True, `Trainer.save_model` pushes too ("Model save")
    trainer.push_to_hub()  # unchanged files are not committed again

    assert not hub.unknown_requests and not hub.handler_errors, hub.describe()
    assert [commit.summary for commit in hub.commits] == ["Model save"]
    assert hub.tokens_seen == {TOKEN}
    files = hub.files(REPO_ID)
    assert set(PUSHED_FILES) <= set(files), sorted(files)
    assert_sgpo_card(files["README.md"].decode())
    assert files["README.md"] == (tmp_path / "out" / "README.md").read_bytes()


def test_hub_token_is_never_uploaded(tmp_path, tokenizer, hub, monkeypatch):
    hub.scan_secrets = True  # refuse a commit whose files contain a token the server was sent, as the Hub does
    point_hub_at(monkeypatch, hub.url, token="hf_env_token_unused")
    trainer = trained(tmp_path, tokenizer, push_to_hub=True, hub_model_id=REPO_ID, hub_token=TOKEN)
    trainer.push_to_hub()
    assert "training_args.bin" in hub.files(REPO_ID)
    assert not [path for path, content in hub.uploaded().items() if TOKEN.encode() in content]
    assert trainer.args.hub_token == TOKEN  # still usable for later pushes


# ---------------------------------------------------------------- pushes that fail


def test_unreachable_endpoint_when_building_a_pushing_trainer_is_a_clear_error(tmp_path, tokenizer, monkeypatch):
    point_hub_at(monkeypatch, closed_port_url(), token=TOKEN)
    with pytest.raises(RuntimeError, match=f"Could not create or reach the Hub repo '{REPO_ID}'") as error:
        SGPOTrainer(
            model=tiny_model(tokenizer),
            args=make_config(tmp_path, max_steps=1, push_to_hub=True, hub_model_id=REPO_ID),
            train_dataset=conversational_dataset(4),
            processing_class=tokenizer,
        )
    message = str(error.value)
    assert "HF_ENDPOINT" in message and "without --push_to_hub" in message
    assert "Connect" in message  # the cause (httpx ConnectError: connection refused)


def test_unreachable_endpoint_at_push_keeps_the_local_save(tmp_path, tokenizer, monkeypatch):
    trainer = trained(tmp_path, tokenizer)  # push_to_hub=False: no Hub at all while training
    output_dir = tmp_path / "out"
    trainer.save_model(str(output_dir))
    saved = snapshot(output_dir)
    assert {"model.safetensors", "README.md", "tokenizer_config.json"} <= set(saved)

    point_hub_at(monkeypatch, closed_port_url(), token=TOKEN)
    trainer.args.push_to_hub = True
    trainer.args.hub_model_id = REPO_ID
    with pytest.raises(RuntimeError, match="Pushing to the Hub failed") as error:
        trainer.push_to_hub()
    message = str(error.value)
    assert REPO_ID in message and str(output_dir) in message and "trainer.push_to_hub()" in message
    assert "Connect" in message
    assert snapshot(output_dir) == saved  # nothing written over, nothing removed


def test_endpoint_going_down_before_the_final_save_keeps_the_local_save(tmp_path, tokenizer, hub, monkeypatch):
    # The repo is created at start; the Hub is gone when the run ends and the command line saves (and pushes).
    point_hub_at(monkeypatch, hub.url, token=TOKEN)
    trainer = trained(tmp_path, tokenizer, push_to_hub=True, hub_model_id=REPO_ID)
    hub.stop()
    output_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="Pushing to the Hub failed") as error:
        trainer.save_model(str(output_dir))
    assert str(output_dir) in str(error.value)
    saved = snapshot(output_dir)
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= set(saved)
    assert_sgpo_card(saved["README.md"].decode())


def test_bad_token_when_building_a_pushing_trainer_is_a_clear_error(tmp_path, tokenizer, hub, monkeypatch):
    hub.rejected_tokens.add("hf_bad")
    point_hub_at(monkeypatch, hub.url, token="hf_bad")
    with pytest.raises(RuntimeError, match=f"Could not create or reach the Hub repo '{REPO_ID}'") as error:
        SGPOTrainer(
            model=tiny_model(tokenizer),
            args=make_config(tmp_path, max_steps=1, push_to_hub=True, hub_model_id=REPO_ID),
            train_dataset=conversational_dataset(4),
            processing_class=tokenizer,
        )
    message = str(error.value)
    assert "401" in message and "hf auth login" in message
    assert hub.rejected_requests and not hub.commits and not hub.unknown_requests, hub.describe()


def test_bad_token_at_push_keeps_the_local_save(tmp_path, tokenizer, hub, monkeypatch):
    point_hub_at(monkeypatch, hub.url, token=TOKEN)
    trainer = trained(tmp_path, tokenizer, push_to_hub=True, hub_model_id=REPO_ID)
    hub.rejected_tokens.add(TOKEN)  # the token is revoked during the run
    output_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="Pushing to the Hub failed") as error:
        trainer.push_to_hub()
    message = str(error.value)
    assert "401" in message and str(output_dir) in message and "trainer.push_to_hub()" in message
    assert not hub.commits and not hub.unknown_requests and not hub.handler_errors, hub.describe()
    saved = snapshot(output_dir)  # `push_to_hub` saves before it uploads
    assert {"model.safetensors", "config.json", "tokenizer_config.json", "README.md"} <= set(saved)
    assert_sgpo_card(saved["README.md"].decode())


# ---------------------------------------------------------------- the command line


def test_command_line_push_flags_reach_the_config():
    _, config, _ = parse_args(["--push_to_hub", "--hub_model_id", "me/x", "--hub_private_repo", "true"])
    assert config.push_to_hub is True and config.hub_model_id == "me/x" and config.hub_private_repo is True
    _, config, model_args = parse_args(
        ["--model_name_or_path", "org/base", "--dataset_name", "org/data", "--push_to_hub", "--hub_model_id", "me/y"]
    )
    assert config.push_to_hub is True and config.hub_model_id == "me/y"
    assert model_args.model_name_or_path == "org/base"
