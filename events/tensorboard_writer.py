"""``TensorboardXWriter``: detectron2's TensorBoard writer, one event per iteration.

Name, signature and behaviour follow ``detectron2.utils.events.TensorboardXWriter``: smoothed
scalars per ``latest_with_smoothing_hint``, only iterations not written yet, images from
``put_image`` and histograms from ``put_histogram`` (cleared from the storage once written),
extra keyword arguments go to ``tensorboardX.SummaryWriter`` (``purge_step``, ``flush_secs``...).

What differs, and why:

* All scalars of one iteration go into ONE ``Event`` whose ``Summary`` holds every value.
  ``SummaryWriter.add_scalar`` costs ~200 us per call (one queue hand-off per event); one event
  for 80 values, built in place with each key's tag computed once, costs a few tens of us.
* Tags are grouped for TensorBoard's sidebar (``losses/loss_ce``, ``aux_layers/loss_ce_0``,
  ``real_synthetic/loss_rel_real``) without renaming the key itself, so searching ``loss_ce``
  still finds it. ``group_tags=False`` writes the bare keys, as detectron2 does.
* The config is recorded once (hparams plugin + a YAML text panel) on a fresh start.
* The crashed run's steps from the start iteration N on are purged (tensorboardX
  ``purge_step=N``) and nothing below N is written again, so every curve stays single-valued.
  N is ``purge_step`` when given, else the storage's ``start_iter`` at the first write (see
  ``events.writers.ResumableWriter``), so writers built before the checkpoint is loaded purge
  right too.
* Events reach the disk within 5 s (``flush_secs``, detectron2's tensorboardX default is 120),
  and a dead event-writer thread (disk full) raises here instead of blocking on a full queue.
"""
from __future__ import annotations

import functools
import re
import time
from typing import Any, Dict, List, Mapping, Optional

from events.storage import get_event_storage
from events.writer_guard import import_optional
from events.writers import ResumableWriter

# Tag groups, first match wins. Keys that already hold a "/" keep the group their author chose.
_AUX_LAYER = re.compile(r"_\d+(_|$)")  # loss_ce_0, cardinality_error_3_unscaled; not AP50
_SPLIT = re.compile(r"(^|_)(real|synthetic|synth)(_|$)")
_TIME_KEYS = {"time", "data_time", "eta_seconds"}
DEFAULT_FLUSH_SECS = 5


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a storage key: ``group/key``, the key itself left whole.

    ``loss_ce`` -> ``losses/loss_ce``; ``loss_ce_0`` -> ``aux_layers/loss_ce_0``;
    ``loss_rel_real`` -> ``real_synthetic/loss_rel_real``; ``lr`` -> ``optim/lr``;
    ``time`` -> ``time/time``; ``bbox/AP`` stays ``bbox/AP``; anything else -> ``metrics/key``.
    """
    if "/" in key:
        return key
    is_loss_like = key.startswith(("loss", "total_loss")) or "error" in key
    if is_loss_like and _AUX_LAYER.search(key):
        group = "aux_layers"
    elif _SPLIT.search(key):
        group = "real_synthetic"
    elif is_loss_like:
        group = "losses"
    elif key in _TIME_KEYS or key.endswith("_time"):
        group = "time"
    elif key == "lr" or key.startswith(("lr_", "grad_norm")):
        group = "optim"
    else:
        group = "metrics"
    return f"{group}/{key}"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"SOLVER": {"BASE_LR": 1e-4}}`` -> ``{"SOLVER.BASE_LR": 1e-4}``; lists become strings.

    The hparams plugin takes only bool, number and string values; ``None`` is left out.
    """
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, prefix=name + "."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


class TensorboardXWriter(ResumableWriter):
    """Write scalars, images and histograms of the current ``EventStorage`` to TensorBoard.

    Args:
        log_dir: directory of the event files (``tensorboard --logdir`` points here or above).
        window_size: median window for scalars put with ``smoothing_hint=True``.
        config: the run's config (nested dict, secrets already removed), recorded once as
            hparams and as a YAML text panel when the run starts fresh (not on a resume).
        group_tags: prefix each tag with its group (see ``tensorboard_tag``).
        kwargs: passed to ``tensorboardX.SummaryWriter``. ``purge_step=N``: training starts at
            N (None: the storage's ``start_iter``, read at the first write).

    The SummaryWriter (and its event file) is created at the first ``write()``, as in detectron2.
    """

    def __init__(
        self,
        log_dir: str,
        window_size: int = 20,
        *,
        config: Optional[Mapping[str, Any]] = None,
        group_tags: bool = True,
        **kwargs: Any,
    ) -> None:
        # Fail at construction (one clear line) rather than at the first write.
        import_optional("tensorboardX", "tb", "TensorboardXWriter")
        self._window_size = window_size
        # tensorboardX's thread flushes every flush_secs (default 120): a crash would lose up to
        # two minutes and a live TensorBoard would lag as much. Five seconds costs nothing.
        kwargs.setdefault("flush_secs", DEFAULT_FLUSH_SECS)
        purge_step = kwargs.pop("purge_step", None)
        self._writer_args = {"logdir": log_dir, **kwargs}
        self._last_write = -1
        self._config = dict(config) if config is not None else None
        self._tag = tensorboard_tag if group_tags else str
        self._tags: Dict[str, str] = {}  # storage key -> tag, computed once per key
        if purge_step is not None:
            self._start_at(purge_step)

    def _begin_at(self, start_iter: int) -> None:
        # The SummaryWriter is created after this (first write): its purge hides the earlier
        # sessions' steps >= start_iter; those below were written by them and are kept.
        self._writer_args["purge_step"] = start_iter
        self._last_write = start_iter - 1
        if start_iter > 0:
            self._config = None  # recorded by the session that started at 0

    @functools.cached_property
    def _writer(self):
        from tensorboardX import SummaryWriter

        # tensorboardX names event files by the second; a writer started within the same
        # second (a quick resume) would truncate the previous file. The creation time in ns
        # keeps names distinct and in time order, the order TensorBoard applies purges in.
        args = {"filename_suffix": f".{time.time_ns()}", **self._writer_args}
        return SummaryWriter(**args)

    def _file_writer(self):
        """The writer's event file, checked alive: a dead worker thread would block us forever."""
        file_writer = self._writer._get_file_writer()
        worker = getattr(file_writer.event_writer, "_worker", None)
        if worker is not None and not worker.is_alive():
            raise RuntimeError(
                f"the event-writing thread for {self._writer_args['logdir']} has died "
                "(disk full or directory removed?); see the traceback it printed"
            )
        return file_writer

    def write(self) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._begin()
        storage = get_event_storage()
        tags = self._tags
        # One Event per iteration, its Summary's values added in place (no message copies).
        events: Dict[int, Any] = {}
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                event = events.get(itr)
                if event is None:
                    event = events[itr] = Event(step=itr)
                tag = tags.get(name) or tags.setdefault(name, self._tag(name))
                event.summary.value.add(tag=tag, simple_value=value)
        file_writer = self._file_writer()
        if self._config is not None and events:
            self._record_config(file_writer, [v.tag for v in events[min(events)].summary.value])
        for itr in sorted(events):
            file_writer.add_event(events[itr], step=itr)
        if events:
            self._last_write = max(events)

        # As in detectron2, this writer owns the storage's images and histograms: it clears
        # them once written (a W&B writer placed before it reads them first).
        if storage._vis_data:
            for img_name, img, step in storage._vis_data:
                self._writer.add_image(img_name, img, step)
            storage.clear_images()
        if storage._histograms:
            for params in storage._histograms:
                self._writer.add_histogram_raw(**params)
            storage.clear_histograms()

    def _record_config(self, file_writer, first_tags: List[str]) -> None:
        """The config as hparams (table view) and YAML text, once, at step 0."""
        import yaml
        from tensorboardX.summary import hparams, text

        # hparams' metric columns: the totals, whose meaning is the same in every trainer.
        metrics = {tag: 0.0 for tag in first_tags if tag.rsplit("/", 1)[-1].startswith("total_loss")}
        for summary in hparams(flatten_config(self._config), metrics):
            file_writer.add_summary(summary, global_step=0)
        config_yaml = yaml.safe_dump(self._config, sort_keys=False, default_flow_style=False)
        # Four-space indent: TensorBoard's text panel renders markdown, this keeps it verbatim.
        markdown = "\n".join("    " + line for line in config_yaml.splitlines())
        file_writer.add_summary(text("config", markdown), global_step=0)
        self._config = None

    def close(self) -> None:
        if "_writer" in self.__dict__:  # never created: nothing to close, no empty file
            self._writer.close()
