"""events.secret_redaction on command lines: the rules that hide a value in config.yaml hide
the same value on the command line (log.txt, train_history.json, W&B's recorded args)."""
from events.secret_redaction import REDACTED, redact_argv, redact_secrets, secret_values

KEY_SHAPED = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c"


def test_every_rule_applies_to_arguments(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "hunter2hunter2")
    argv = [
        "tools/train_net.py", "--config-file", "configs/demo.yaml",
        "WANDB.NAME", f"run-{KEY_SHAPED}",  # key-shaped token inside a value
        "WANDB.GROUP", "team-hunter2hunter2",  # holds an environment secret
        "MY.API_KEY", "short",  # any value after a secret-named key
        "SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "outputs/run-1",
    ]
    assert redact_argv(argv) == [
        "tools/train_net.py", "--config-file", "configs/demo.yaml",
        "WANDB.NAME", REDACTED, "WANDB.GROUP", REDACTED, "MY.API_KEY", REDACTED,
        "SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "outputs/run-1",
    ]


def test_a_secret_named_option_with_its_value_in_one_argument(monkeypatch):
    monkeypatch.delenv("MY_SERVICE_TOKEN", raising=False)
    argv = ["train.py", "--hf_token=hf_" + "x1" * 17, "trainer.api_key=short", "--lr=0.1", "--note=an API_KEY=is here"]
    assert redact_argv(argv) == [
        "train.py", f"--hf_token={REDACTED}", f"trainer.api_key={REDACTED}", "--lr=0.1", "--note=an API_KEY=is here",
    ]

def test_a_value_hidden_in_the_config_is_hidden_on_the_command_line(monkeypatch):
    monkeypatch.delenv("MY_SERVICE_TOKEN", raising=False)
    config = {"WANDB": {"NAME": "plain-name", "API_TOKEN": "not-key-shaped"}}
    assert secret_values(config) == ["not-key-shaped"]
    argv = ["train.py", "WANDB.NAME", "plain-name", "NOTE", "not-key-shaped"]
    assert redact_argv(argv, config) == ["train.py", "WANDB.NAME", "plain-name", "NOTE", REDACTED]
    # ... and in any other mapping that is told about it (W&B's name, group and tags).
    assert redact_secrets({"group": "not-key-shaped"}, also_hide=secret_values(config))[0] == {"group": REDACTED}
