"""engine.config: defaults, _BASE_ chains, YAML-typed overrides, one-line errors, dump round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from engine.config import Config, ConfigError, dump_config, get_cfg, load_config
from engine.demo.hf_detr import HfDetrTrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_error(path, overrides=()) -> str:
    """Load, expect a ConfigError, return its message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------
def test_defaults_follow_the_spine_contract():
    cfg = get_cfg()
    assert cfg.TELEMETRY == {
        "WRITE_PERIOD": 20,
        "WINDOW_SIZE": 20,
        "DEFERRED_REDUCTION": False,
        "STRICT_WRITERS": False,
        "HISTOGRAM_PERIOD": 0,
        "LOG_GRAD_NORM": True,
    }
    assert cfg.TENSORBOARD == {"ENABLED": True, "LOG_DIR": ""}
    assert cfg.WANDB == {
        "ENABLED": True,
        "PROJECT": "detr-telemetry",
        "ENTITY": "",
        "NAME": "",
        "GROUP": "",
        "TAGS": [],
        "MODE": "auto",
        "DIR": "",
        "RUN_ID": "",
    }
    assert set(cfg.DATASETS.MULTI_DATASET) == {
        "ENABLED", "REAL_LOSS_WEIGHT", "SYNTHETIC_LOSS_WEIGHT", "SYNTHETIC_RATIO", "NORMALIZE_LOSS_WEIGHTS",
    }
    assert {"MAX_ITER", "BASE_LR", "IMS_PER_BATCH", "CHECKPOINT_PERIOD", "WEIGHT_DECAY", "STEPS", "GAMMA",
            "WARMUP_ITERS", "CLIP_GRAD_NORM"} <= set(cfg.SOLVER)
    # detectron2's defaults where detectron2 has the key
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.CHECKPOINT_PERIOD) == (40000, 16, 5000)
    assert cfg.SEED == -1 and cfg.TEST.EVAL_PERIOD == 0
    # the criterion's keys and the model's live side by side under MODEL.DETR
    assert {"COST_CLASS", "L1_WEIGHT", "GIOU_WEIGHT", "NO_OBJECT_WEIGHT", "NO_REL_WEIGHT", "DEC_LAYERS",
            "HIDDEN_DIM", "NHEADS", "DIM_FEEDFORWARD", "NUM_RELATION_QUERIES"} <= set(cfg.MODEL.DETR)


def test_get_cfg_returns_independent_writable_copies():
    first, second = get_cfg(), get_cfg()
    first.SOLVER.MAX_ITER = 7
    assert second.SOLVER.MAX_ITER == 40000


def test_loaded_config_is_read_only(tmp_path):
    cfg = load_config(write(tmp_path / "a.yaml", "SOLVER:\n  MAX_ITER: 10\n"))
    with pytest.raises(ReadonlyConfigError):
        cfg.SOLVER.MAX_ITER = 11


def test_empty_file_gives_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path / "empty.yaml", ""))
    assert OmegaConf.to_container(cfg) == OmegaConf.to_container(get_cfg())


# Configs of scripts that add their own keys to engine.config.Config (load_config's schema).
SCHEMAS = {"hf_detr.yaml": HfDetrTrainConfig}


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    cfg = load_config(CONFIG_DIR / name, schema=SCHEMAS.get(name, Config))
    assert cfg.SOLVER.MAX_ITER > 0


def test_shipped_configs_carry_the_promised_values():
    demo = load_config(CONFIG_DIR / "demo.yaml")
    assert demo.OUTPUT_DIR == "outputs/demo"
    assert demo.MODEL.DETR.HIDDEN_DIM == 64 and demo.MODEL.DETR.DEC_LAYERS in (2, 3)
    assert demo.SOLVER.IMS_PER_BATCH == 8 and 300 <= demo.SOLVER.MAX_ITER <= 400
    assert (demo.TELEMETRY.WRITE_PERIOD, demo.SOLVER.CHECKPOINT_PERIOD) == (20, 100)
    assert demo.WANDB.ENABLED and demo.WANDB.MODE == "offline" and demo.TENSORBOARD.ENABLED
    assert demo.DATASETS.MULTI_DATASET.ENABLED

    speaq = load_config(CONFIG_DIR / "speaq_multi_dataset.yaml")
    detr, multi = speaq.MODEL.DETR, speaq.DATASETS.MULTI_DATASET
    assert (detr.COST_CLASS, detr.L1_WEIGHT, detr.GIOU_WEIGHT) == (2.0, 5.0, 2.0)
    assert (detr.NO_OBJECT_WEIGHT, detr.NO_REL_WEIGHT, detr.DEC_LAYERS) == (0.1, 0.1, 6)
    assert (multi.REAL_LOSS_WEIGHT, multi.SYNTHETIC_LOSS_WEIGHT) == (1.0, 0.5)
    assert "_BASE_" in (CONFIG_DIR / "speaq_multi_dataset.yaml").read_text()


# --------------------------------------------------------------------------------------------
# _BASE_ chains
# --------------------------------------------------------------------------------------------
def test_base_chain_resolves_relative_to_the_including_file(tmp_path, monkeypatch):
    write(tmp_path / "root.yaml", "SOLVER:\n  MAX_ITER: 1\n  BASE_LR: 0.5\nOUTPUT_DIR: root\n")
    write(tmp_path / "mid" / "mid.yaml", "_BASE_: ../root.yaml\nSOLVER:\n  MAX_ITER: 2\nSEED: 3\n")
    leaf = write(tmp_path / "mid" / "leaf" / "leaf.yaml", "_BASE_: ../mid.yaml\nOUTPUT_DIR: leaf\n")
    monkeypatch.chdir(tmp_path / "mid")  # a cwd-relative lookup would find neither base

    cfg = load_config(leaf)

    assert cfg.SOLVER.BASE_LR == 0.5  # only the root sets it
    assert cfg.SOLVER.MAX_ITER == 2  # mid overrides root
    assert cfg.SEED == 3
    assert cfg.OUTPUT_DIR == "leaf"  # leaf overrides root
    assert "_BASE_" not in cfg


def test_absolute_base_path(tmp_path):
    base = write(tmp_path / "elsewhere" / "base.yaml", "SEED: 9\n")
    cfg = load_config(write(tmp_path / "a.yaml", f"_BASE_: {base}\n"))
    assert cfg.SEED == 9


def test_base_cycle_is_one_line_naming_the_files(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    message = config_error(tmp_path / "a.yaml")
    assert "cycle" in message and "a.yaml" in message and "b.yaml" in message


def test_self_including_file_is_a_cycle(tmp_path):
    message = config_error(write(tmp_path / "self.yaml", "_BASE_: self.yaml\n"))
    assert "cycle" in message and "self.yaml" in message


# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------
def test_overrides_are_parsed_as_yaml_and_win_over_files(tmp_path):
    path = write(tmp_path / "a.yaml", "SOLVER:\n  MAX_ITER: 10\n")
    cfg = load_config(
        path,
        [
            "SOLVER.MAX_ITER", "50",
            "SOLVER.BASE_LR", "0.002",
            "SOLVER.STEPS", "[10, 20]",
            "TENSORBOARD.ENABLED", "false",
            "WANDB.TAGS", "[a, b]",
            "WANDB.NAME", "run-1",
        ],
    )
    assert cfg.SOLVER.MAX_ITER == 50 and isinstance(cfg.SOLVER.MAX_ITER, int)
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.002)
    assert list(cfg.SOLVER.STEPS) == [10, 20]
    assert cfg.TENSORBOARD.ENABLED is False
    assert list(cfg.WANDB.TAGS) == ["a", "b"]
    assert cfg.WANDB.NAME == "run-1"


def test_exponent_floats_work_in_files_and_overrides(tmp_path):
    # PyYAML reads "1e-4" as a string; the float field still gets 0.0001.
    cfg = load_config(write(tmp_path / "a.yaml", "SOLVER:\n  BASE_LR: 1e-4\n"), ["SOLVER.WEIGHT_DECAY", "5e-3"])
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-4)
    assert cfg.SOLVER.WEIGHT_DECAY == pytest.approx(5e-3)


def test_override_without_value_is_one_line(tmp_path):
    message = config_error(write(tmp_path / "a.yaml", ""), ["SOLVER.MAX_ITER"])
    assert "SOLVER.MAX_ITER" in message and "no value" in message


# --------------------------------------------------------------------------------------------
# One-line errors naming key and file
# --------------------------------------------------------------------------------------------
def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path / "typo.yaml", "SOLVER:\n  MAX_ITR: 5\n")
    message = config_error(path)
    assert "SOLVER.MAX_ITR" in message and str(path) in message
    assert "did you mean SOLVER.MAX_ITER" in message


def test_unknown_top_level_key(tmp_path):
    message = config_error(write(tmp_path / "a.yaml", "MODLE:\n  DEVICE: cpu\n"))
    assert "MODLE" in message and "a.yaml" in message


def test_unknown_key_in_a_base_names_the_base_file(tmp_path):
    write(tmp_path / "base.yaml", "TELEMETRY:\n  WRITE_PERIODE: 5\n")
    message = config_error(write(tmp_path / "child.yaml", "_BASE_: base.yaml\n"))
    assert "TELEMETRY.WRITE_PERIODE" in message and "base.yaml" in message and "child.yaml" not in message


def test_unknown_key_in_an_override_names_the_override(tmp_path):
    message = config_error(write(tmp_path / "a.yaml", ""), ["SOLVER.MAX_ITERS", "5"])
    assert "SOLVER.MAX_ITERS" in message and "command-line" in message


@pytest.mark.parametrize(
    "text, key",
    [
        ("SOLVER:\n  MAX_ITER: abc\n", "SOLVER.MAX_ITER"),
        ("SOLVER:\n  MAX_ITER: 1.5\n", "SOLVER.MAX_ITER"),
        ("SOLVER:\n  BASE_LR: [1]\n", "SOLVER.BASE_LR"),
        ("SOLVER:\n  STEPS: [a]\n", "SOLVER.STEPS"),
        ("SOLVER:\n  STEPS: 5\n", "SOLVER.STEPS"),
        ("TENSORBOARD:\n  ENABLED: 3\n", "TENSORBOARD.ENABLED"),
        ("WANDB:\n  MODE: off\n", "WANDB.MODE"),  # YAML 1.1 reads `off` as false
        ("WANDB:\n  MODE: sometimes\n", "WANDB.MODE"),
        ("SOLVER: 5\n", "SOLVER"),
        ("MODEL:\n  DETR: fast\n", "MODEL.DETR"),
    ],
)
def test_wrong_type_names_key_and_file(tmp_path, text, key):
    path = write(tmp_path / "bad.yaml", text)
    message = config_error(path)
    assert key in message and "bad.yaml" in message


def test_wrong_type_in_an_override(tmp_path):
    message = config_error(write(tmp_path / "a.yaml", ""), ["SOLVER.IMS_PER_BATCH", "eight"])
    assert "SOLVER.IMS_PER_BATCH" in message and "command-line" in message


def test_missing_file_is_one_line(tmp_path):
    message = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in message and "not found" in message


def test_missing_base_names_both_files(tmp_path):
    message = config_error(write(tmp_path / "child.yaml", "_BASE_: gone.yaml\n"))
    assert "gone.yaml" in message and "child.yaml" in message and "not found" in message


def test_invalid_yaml_names_file_and_line(tmp_path):
    message = config_error(write(tmp_path / "broken.yaml", "SOLVER:\n  MAX_ITER: 5\n  BASE_LR: [1, 2\n"))
    assert "broken.yaml:" in message and "invalid YAML" in message


def test_top_level_list_is_rejected(tmp_path):
    message = config_error(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    assert "list.yaml" in message and "mapping" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------------------------
# dump_config
# --------------------------------------------------------------------------------------------
def test_dump_round_trip(tmp_path):
    cfg = load_config(CONFIG_DIR / "demo.yaml", ["SOLVER.MAX_ITER", "123", "WANDB.TAGS", "[x, y]"])
    out = tmp_path / "out" / "config.yaml"
    dump_config(cfg, out)

    assert "_BASE_" not in out.read_text()
    again = load_config(out)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg)
    assert again.SOLVER.MAX_ITER == 123


def test_dump_never_writes_the_wandb_api_key(tmp_path, monkeypatch, caplog):
    api_key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    cfg = get_cfg()
    cfg.WANDB.NAME = f"run-{api_key}"  # pasted by mistake
    cfg.WANDB.TAGS = ["ok", api_key]
    out = tmp_path / "config.yaml"

    dump_config(cfg, out)

    text = out.read_text()
    assert api_key not in text
    assert "<redacted>" in text and "ok" in text
    assert "WANDB.NAME" in caplog.text


def test_dump_masks_a_key_shaped_value_without_any_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    key_shaped = "a1" * 20 + "ff"  # 42 letters and digits, like a W&B key
    cfg = get_cfg()
    cfg.WANDB.GROUP = key_shaped
    out = tmp_path / "config.yaml"
    dump_config(cfg, out)
    assert key_shaped not in out.read_text()


def test_dump_leaves_ordinary_configs_untouched(tmp_path):
    cfg = load_config(CONFIG_DIR / "speaq_multi_dataset.yaml")
    out = tmp_path / "config.yaml"
    dump_config(cfg, out)
    assert "<redacted>" not in out.read_text()


# --------------------------------------------------------------------------------------------
# Declared value constraints, checked once on the merged config
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("TELEMETRY.WRITE_PERIOD", "0"),
        ("MODEL.DETR.NUM_CLASSES", "0"),
        ("MODEL.DETR.NHEADS", "5"),  # 256 is not divisible by 5: torch would assert deep inside
        ("SOLVER.MAX_ITER", "-5"),
        ("SOLVER.IMS_PER_BATCH", "0"),
        ("SOLVER.BASE_LR", ".nan"),
        ("SOLVER.STEPS", "[10, -1]"),
        ("DATASETS.MULTI_DATASET.SYNTHETIC_RATIO", "1.5"),
        ("DATASETS.DEMO.SYNTHETIC.NUM_SCENES", "0"),
        ("WANDB.MODE", "sometimes"),
    ],
)
def test_out_of_range_override_names_key_and_override(tmp_path, key, value):
    message = config_error(write(tmp_path / "a.yaml", ""), [key, value])
    assert f"{key}" in message and f"command-line override '{key} {value}'" in message and value.strip(".") in message


def test_a_constraint_between_two_keys_names_where_each_was_set(tmp_path):
    base = write(tmp_path / "base.yaml", "MODEL:\n  DETR:\n    HIDDEN_DIM: 64\n")
    message = config_error(write(tmp_path / "child.yaml", f"_BASE_: {base}\n"), ["MODEL.DETR.NHEADS", "5"])
    assert "MODEL.DETR.NHEADS must divide HIDDEN_DIM" in message
    assert "MODEL.DETR.HIDDEN_DIM is 64, set in" in message and "base.yaml" in message


def test_constraints_judge_the_merged_config_not_each_file(tmp_path):
    # The base alone breaks NHEADS | HIDDEN_DIM (8 does not divide 36); the child repairs it.
    base = write(tmp_path / "base.yaml", "MODEL:\n  DETR:\n    HIDDEN_DIM: 36\n")
    cfg = load_config(write(tmp_path / "child.yaml", f"_BASE_: {base}\nMODEL:\n  DETR:\n    NHEADS: 6\n"))
    assert (cfg.MODEL.DETR.HIDDEN_DIM, cfg.MODEL.DETR.NHEADS) == (36, 6)


def test_every_numeric_key_declares_its_range():
    """A new int/float key cannot slip in without a declared constraint (the criterion's keys
    are checked by ``check_criterion_config``; seeds and the version take any integer)."""
    import dataclasses
    import typing

    from criterion.config import CriterionConfig
    from engine.config import Config, declared_checks

    free = {"SEED", "VERSION", "DATASETS.DEMO.SEED"}
    criterion_keys = {f"MODEL.DETR.{f.name}" for f in dataclasses.fields(CriterionConfig)}

    def numeric_keys(schema, prefix=""):
        for name, hint in typing.get_type_hints(schema).items():
            if dataclasses.is_dataclass(hint):
                yield from numeric_keys(hint, f"{prefix}{name}.")
            elif hint in (int, float) or typing.get_args(hint) in ((int,), (float,)):
                yield f"{prefix}{name}"

    declared = {name for name, _ in declared_checks()}
    missing = set(numeric_keys(Config)) - declared - criterion_keys - free
    assert not missing, f"numeric keys without a declared range: {sorted(missing)}"


# --------------------------------------------------------------------------------------------
# Files and values that are not configs: refused before any parser recursion or expansion
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file"),
        (b"SOLVER:\n  MAX_ITER: 5 \xe9t\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 22)"),
        (b"SOLVER:\n  MAX_ITER: 5\x00\x00\n", "binary file"),
    ],
    ids=["png", "latin-1", "nul-bytes"],
)
def test_binary_or_non_utf8_file_is_one_line(tmp_path, content, expected):
    path = tmp_path / "weird.yaml"
    path.write_bytes(content)
    message = config_error(path)
    assert str(path) in message and expected in message


def test_deeply_nested_value_is_refused_not_a_recursion_error(tmp_path):
    path = write(tmp_path / "deep.yaml", "SOLVER:\n  STEPS: " + "[" * 5000 + "]" * 5000 + "\n")
    message = config_error(path)
    assert "deep.yaml:2" in message and "nested more than" in message
    message = config_error(write(tmp_path / "a.yaml", ""), ["SOLVER.STEPS", "[" * 5000 + "]" * 5000])
    assert "SOLVER.STEPS" in message and "nested more than" in message and len(message) < 300


# "Billion laughs": each level a list of nine aliases of the one before; the last is a list value.
ALIAS_BOMB = "L0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"L{i}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for i, (a, b) in enumerate(zip("abcdefgh", "bcdefghi"), 1)
) + "WANDB:\n  TAGS: [*i, *i, *i]\n"


def test_yaml_alias_bomb_is_refused_at_the_first_alias(tmp_path):
    assert len(ALIAS_BOMB) < 1000  # nine levels: 9**9 (387 million) items once expanded
    message = config_error(write(tmp_path / "bomb.yaml", ALIAS_BOMB))
    assert "bomb.yaml:2" in message and "aliases (*a) are not allowed" in message
    message = config_error(write(tmp_path / "a.yaml", ""), ["WANDB.TAGS", "[&x [a, b], *x, *x]"])
    assert "WANDB.TAGS" in message and "aliases (*x) are not allowed" in message
