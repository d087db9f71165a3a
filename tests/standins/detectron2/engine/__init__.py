"""Stand-in for tests, NOT detectron2: ``detectron2/engine/__init__.py`` (commit 02b5c4e) imports
every submodule, so importing any of them loads train_loop, hooks and defaults."""
from .train_loop import *  # noqa: F401,F403
from .hooks import *  # noqa: F401,F403
from .defaults import DefaultTrainer, create_ddp_model, default_writers  # noqa: F401
