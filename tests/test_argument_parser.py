"""engine.defaults.default_argument_parser: options are accepted before, between and after the
``KEY VALUE`` overrides, and values are never mistaken for options."""
import pytest

from engine.defaults import default_argument_parser


def parse(*argv):
    return default_argument_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--config-file", "c.yaml", "--resume", "SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "out"],
        ["--config-file", "c.yaml", "SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "out", "--resume"],
        ["--config-file", "c.yaml", "SOLVER.MAX_ITER", "50", "--resume", "OUTPUT_DIR", "out"],
        ["SOLVER.MAX_ITER", "50", "--resume", "OUTPUT_DIR", "out", "--config-file", "c.yaml"],
        ["--resume", "SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "out", "--config-file=c.yaml"],
    ],
    ids=["before", "after", "between", "config-file-last", "with-equals"],
)
def test_options_may_follow_the_overrides(argv):
    args = parse(*argv)
    assert args.resume is True and args.config_file == "c.yaml"
    assert args.opts == ["SOLVER.MAX_ITER", "50", "OUTPUT_DIR", "out"]


def test_an_option_with_a_value_after_the_overrides():
    args = parse("--config-file", "c.yaml", "SOLVER.MAX_ITER", "-5", "--output-dir", "o")
    assert args.output_dir == "o" and args.opts == ["SOLVER.MAX_ITER", "-5"]


def test_a_value_that_looks_like_an_option_stays_a_value():
    args = parse("--config-file", "c.yaml", "WANDB.NAME", "--resume")
    assert args.resume is False and args.opts == ["WANDB.NAME", "--resume"]


def test_an_unknown_option_among_the_overrides_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        parse("--config-file", "c.yaml", "SOLVER.MAX_ITER", "50", "--resum")
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "unrecognized option --resum" in error and "--resume" in error


def test_resume_command_continues_in_the_same_directory(monkeypatch):
    from omegaconf import OmegaConf

    from engine.defaults import resume_command

    run_dir = "outputs/demo-20260101-120000"
    cfg = OmegaConf.create({"OUTPUT_DIR": run_dir, "WANDB": {"GROUP": "g"}})
    argv = ["tools/train_net.py", "--config-file", "c.yaml", "--output-dir", "auto", "SOLVER.MAX_ITER", "50"]
    monkeypatch.setattr("sys.argv", argv)
    assert resume_command(cfg) == (
        f"python tools/train_net.py --resume --config-file c.yaml --output-dir {run_dir} SOLVER.MAX_ITER 50"
    )
    monkeypatch.setattr("sys.argv", ["tools/train_net.py", "--config-file", "c.yaml", "--resume"])
    expected = "torchrun --nproc_per_node=2 tools/train_net.py --config-file c.yaml --resume"
    assert resume_command(cfg, world_size=2) == expected
