"""Stand-in for tests, NOT detectron2: ``detectron2/engine/defaults.py`` (commit 02b5c4e) reduced
to ``default_writers`` and ``DefaultTrainer``. Mirrored: the writers imported by name from
``detectron2.utils.events``; ``DefaultTrainer`` building model, optimizer, loader, DDP wrapper,
an inner ``SimpleTrainer`` (``AMPTrainer`` with ``cfg.SOLVER.AMP.ENABLED``), scheduler and a
``DetectionCheckpointer(trainer=weakref.proxy(self))``, then its hooks in __init__ (so writers
exist before ``resume_or_load``); ``resume_or_load`` starting at the checkpoint's iteration + 1;
``build_writers`` returning ``default_writers``; ``state_dict`` nesting the inner trainer's.
What differs: ``build_train_loader`` must be overridden (no datasets here), ``build_model``
uses the stand-in registry, the optimizer is plain SGD and the scheduler torch's ``MultiStepLR``,
evaluation is ``test()`` (override it), PreciseBN is left out.
"""
import logging
import os
import weakref
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

from . import hooks
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase

__all__ = ["create_ddp_model", "default_writers", "DefaultTrainer"]


def create_ddp_model(model, **kwargs):
    if comm.get_world_size() == 1:
        return model
    return DistributedDataParallel(model, **kwargs)


def default_writers(output_dir, max_iter=None):
    os.makedirs(output_dir, exist_ok=True)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


class DefaultTrainer(TrainerBase):
    def __init__(self, cfg):
        super().__init__()
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1

    def build_hooks(self):
        cfg = self.cfg
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def build_writers(self):
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self):
        super().train(self.start_iter, self.max_iter)

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_model(cls, cfg):
        return build_model(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        raise NotImplementedError("stand-in: override build_train_loader (no datasets here)")

    @classmethod
    def build_optimizer(cls, cfg, model):
        return torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.SOLVER.STEPS), cfg.SOLVER.GAMMA)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        logging.getLogger(__name__).info("stand-in DefaultTrainer.test: no evaluators")
        return OrderedDict()


for _attr in ["model", "data_loader", "optimizer"]:
    setattr(
        DefaultTrainer,
        _attr,
        property(lambda self, x=_attr: getattr(self._trainer, x), lambda self, value, x=_attr: setattr(self._trainer, x, value)),
    )
