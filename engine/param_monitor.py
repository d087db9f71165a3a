"""``ParameterMonitor``: the gradient's global norm every step and weight/gradient histograms
every N steps, put into the storage for the writers (TensorBoard, W&B, metrics.json).

It runs at ``after_backward`` (gradients ready, optimizer not yet stepped). With DDP the
gradients are already averaged across ranks at that point, so every rank computes the same norm
and no communication is needed. With a ``GradScaler`` the gradients are still scaled here;
unscale them before this hook runs if the norm should be the real one.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from engine.hooks import HookBase

GRAD_NORM_KEY = "grad_norm"
WEIGHTS_PREFIX = "params/"
GRADS_PREFIX = "grads/"


class ParameterMonitor(HookBase):
    """Put ``grad_norm`` each iteration and ``params/<name>``, ``grads/<name>`` histograms.

    Args:
        model: the module whose parameters are watched (default: ``trainer.model``).
        log_grad_norm: put the global norm of all gradients as the scalar ``grad_norm``.
        histogram_period: put one histogram per parameter (weights and gradients) every this
            many iterations; 0 = never. Histograms cost a host copy of every parameter.
        deferred: keep each step's norm on the device and move the whole period to the host
            at once, every ``period`` iterations (use the writers' period), instead of one
            host sync per step. On GPU this is the difference between a sync per step and none.
        period: the flush period in deferred mode.
        norm_type: the p of the p-norm (2 = Euclidean, ``float("inf")`` = max).
        histogram_bins: bins per histogram (W&B shows at most 512).
    """

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        *,
        log_grad_norm: bool = True,
        histogram_period: int = 0,
        deferred: bool = False,
        period: int = 20,
        norm_type: float = 2.0,
        histogram_bins: int = 64,
    ) -> None:
        if histogram_period < 0 or period < 1:
            raise ValueError(
                f"ParameterMonitor needs histogram_period >= 0 and period >= 1, got {histogram_period}, {period}"
            )
        self._model = model
        self._log_grad_norm = log_grad_norm
        self._histogram_period = histogram_period
        self._deferred = deferred
        self._period = period
        self._norm_type = norm_type
        self._bins = histogram_bins
        self._pending: List[Tuple[int, torch.Tensor]] = []

    @classmethod
    def from_config(cls, cfg: Any, model: Optional[torch.nn.Module] = None) -> Optional["ParameterMonitor"]:
        """The monitor ``cfg.TELEMETRY`` asks for (``LOG_GRAD_NORM``, ``HISTOGRAM_PERIOD``,
        ``DEFERRED_REDUCTION``, ``WRITE_PERIOD``), or None when both outputs are off
        (``register_hooks`` skips None)."""
        telemetry = cfg.TELEMETRY
        if not telemetry.LOG_GRAD_NORM and not telemetry.HISTOGRAM_PERIOD:
            return None
        return cls(
            model,
            log_grad_norm=telemetry.LOG_GRAD_NORM,
            histogram_period=telemetry.HISTOGRAM_PERIOD,
            deferred=telemetry.DEFERRED_REDUCTION,
            period=telemetry.WRITE_PERIOD,
        )

    @property
    def model(self) -> torch.nn.Module:
        return self._model if self._model is not None else self.trainer.model

    def after_backward(self) -> None:
        iteration = self.trainer.iter
        if self._log_grad_norm:
            self._record_grad_norm(iteration)
        if self._histogram_period and (iteration + 1) % self._histogram_period == 0:
            self._put_histograms()

    def after_train(self) -> None:
        # An interrupted period still reaches the storage (PeriodicWriter, registered after
        # this hook, writes it in its own after_train).
        self._flush()

    def _record_grad_norm(self, iteration: int) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads, norm_type=self._norm_type)
        if not self._deferred:
            self.trainer.storage.put_scalar(GRAD_NORM_KEY, norm.item(), cur_iter=iteration)
            return
        self._pending.append((iteration, norm.detach()))
        if (iteration + 1) % self._period == 0 or iteration == self.trainer.max_iter - 1:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        iterations = [itr for itr, _ in self._pending]
        values = torch.stack([norm for _, norm in self._pending]).tolist()  # one host transfer
        self._pending = []
        storage = self.trainer.storage
        for itr, value in zip(iterations, values):
            storage.put_scalar(GRAD_NORM_KEY, value, cur_iter=itr)

    def _put_histograms(self) -> None:
        storage = self.trainer.storage
        for name, param in self.model.named_parameters():
            storage.put_histogram(WEIGHTS_PREFIX + name, param.detach(), bins=self._bins)
            if param.grad is not None:
                storage.put_histogram(GRADS_PREFIX + name, param.grad.detach(), bins=self._bins)
