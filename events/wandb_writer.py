"""``WandbWriter``: the storage's scalars and histograms in a Weights & Biases run.

* The x-axis is the training iteration: every row carries ``iteration`` and
  ``define_metric("*", step_metric="iteration")`` plots everything against it. W&B's own
  ``_step`` just counts rows, so evaluation or user code logging at other cadences never trips
  W&B's "step must increase" rule (a lower explicit step is dropped with only a warning).
* Modes: ``online``, ``offline`` (no network; ``wandb sync <dir>/wandb/offline-run-*`` later),
  ``disabled`` (a no-op run), and ``auto`` = online when an API key is configured, else offline.
* Resume: the run id and the last iteration handed to ``run.log`` are kept in
  ``wandb_run.json`` (in the output directory, next to the checkpoints). Unless ``resume`` is
  given, the run opens at the first write and resumes when training started past iteration 0
  (the storage's ``start_iter``), so a writer built before the checkpoint is loaded (detectron2's
  ``DefaultTrainer``) resumes without being told. Resuming reopens the
  same run id with ``resume="allow"`` and logs only iterations after the last one W&B already
  holds: a resumed curve never goes back and no iteration appears twice. The crashed run's
  values between the checkpoint and the crash stay in W&B (training replays them exactly, and
  TensorBoard and metrics.json show the resumed values): W&B's "rewind" (``resume_from``) is a
  server-side preview feature that needs ``_step`` to be the iteration, which breaks the
  evaluation cadence above, and an offline run cannot ask the server what it holds.
* What W&B holds is less than what was handed to ``run.log`` when the trainer was killed:
  wandb-core writes its offline file in whole 32 KiB blocks and flushes the partial last one
  only at ``finish()``, so a SIGKILL loses up to ~32 KiB of rows. Offline, the resumed writer
  therefore reads the previous run files of the same id (``wandb/offline-run-*-<id>/``) and
  continues after the last iteration they hold in full, re-logging the lost rows that training
  replays (rows from before the checkpoint it cannot re-log; a warning names them). Online,
  it continues after the state file's iteration (or the server summary's, if higher): rows
  wandb-core had not yet sent when the process was killed are lost from the run.
* The API key is never read, logged or put in the config: wandb finds it itself. Secrets a user
  put elsewhere (a token pasted as ``WANDB.GROUP``) are redacted by ``events.secret_redaction``
  everywhere W&B would show them: the config, the run name, group and tags, and the command
  line that wandb records as the run's ``args`` metadata.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import netrc
import os
import secrets
import string
import sys
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence
from urllib.parse import urlparse

from events.storage import get_event_storage, has_event_storage
from events.wandb_records import last_logged_iteration
from events.secret_redaction import redact_argv, redact_secrets, secret_values
from events.writer_guard import import_optional
from events.writers import ResumableWriter

logger = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled")
STATE_FILE_NAME = "wandb_run.json"
_ITERATION = "iteration"


def api_key_configured() -> bool:
    """Whether wandb would find an API key: ``WANDB_API_KEY`` or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """``"auto"`` -> ``WANDB_MODE`` if set, else online with an API key, else offline."""
    if mode not in MODES:
        raise ValueError(f"WANDB.MODE must be one of {', '.join(MODES)}; got {mode!r}")
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        return {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
    return "online" if api_key_configured() else "offline"


def _new_run_id() -> str:
    """Eight lowercase letters/digits, the shape of W&B's own run ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _read_state(path: str) -> Dict[str, Any]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_state(path: str, state: Mapping[str, Any]) -> None:
    """Atomic (temporary file + ``os.replace``): a crash mid-write leaves the old state."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp_path, path)


def wandb_histogram(params: Mapping[str, Any], max_bins: int = 512):
    """A ``wandb.Histogram`` from a ``put_histogram`` record (TensorBoard-style upper limits:
    ``bucket_limits[i]`` is the upper edge of bin ``i``).

    W&B takes at most 512 bins, so neighbouring bins are merged when there are more.
    """
    import wandb

    counts, limits = list(params["bucket_counts"]), list(params["bucket_limits"])
    lower = params["min"]
    if len(limits) > 1:
        # A constant tensor (a zero-initialised bias) gets bins centred on its value, so the
        # first bin starts below ``min``; one bin width below the first limit is its true edge.
        lower = min(lower, limits[0] - (limits[1] - limits[0]))
    edges = [lower, *limits]
    factor = math.ceil(len(counts) / max_bins)
    if factor > 1:
        counts = [sum(counts[i : i + factor]) for i in range(0, len(counts), factor)]
        edges = edges[::factor] + ([edges[-1]] if (len(edges) - 1) % factor else [])
    return wandb.Histogram(np_histogram=(counts, edges))


@contextlib.contextmanager
def _argv_redacted_for_wandb(config: Mapping[str, Any]):
    """``sys.argv`` with secrets redacted while ``wandb.init`` runs: wandb records
    ``sys.argv[1:]`` as the run's ``args`` metadata (uploaded online) and has no setting to
    replace it, only ``x_disable_meta``, which would drop the whole environment record."""
    original = sys.argv
    sys.argv = redact_argv(original, config)
    try:
        yield
    finally:
        sys.argv = original


class WandbWriter(ResumableWriter):
    """Log the latest (window-smoothed) scalars and new histograms of the storage to W&B.

    Args:
        project, entity, name, group, tags: as in ``wandb.init`` ("" = W&B's default).
        run_dir: where wandb writes (``<run_dir>/wandb/...``); created if missing.
        config: the run's config (nested dict); secret-looking entries are redacted.
        mode: ``auto`` | ``online`` | ``offline`` | ``disabled`` (see ``resolve_mode``).
        run_id: a fixed run id; "" = the one saved in ``state_file`` when resuming, else new.
        resume: continue the run saved in ``state_file`` (or ``run_id``) after a restart
            (True) or start a new one (False), opening it now; None (default): open it at the
            first write and continue the saved run when training started past iteration 0
            (the storage's ``start_iter``, see ``events.writers.ResumableWriter``).
        resume_iter: the iteration training resumes at (the checkpoint's next one), to name the
            rows a killed offline run lost that training will not replay; None if unknown
            (with ``resume=None`` it is the storage's ``start_iter``).
        state_file: where the run id and last logged iteration live (default
            ``<run_dir>/wandb_run.json``; keep it next to the checkpoints).
        window_size: median window for scalars put with ``smoothing_hint=True``.
        clear_histograms: drop the storage's histograms once logged; leave False when a
            ``TensorboardXWriter`` comes after this writer (it clears them).
        system_metrics: let wandb sample CPU/GPU/memory in the background.

    Create it on the main process only: every instance opens a run.
    """

    def __init__(
        self,
        project: str = "detr-telemetry",
        *,
        run_dir: str,
        config: Optional[Mapping[str, Any]] = None,
        entity: str = "",
        name: str = "",
        group: str = "",
        tags: Sequence[str] = (),
        mode: str = "auto",
        run_id: str = "",
        resume: Optional[bool] = None,
        resume_iter: Optional[int] = None,
        state_file: Optional[str] = None,
        window_size: int = 20,
        clear_histograms: bool = True,
        system_metrics: bool = True,
    ) -> None:
        wandb = import_optional("wandb", "wandb", "WandbWriter")
        self._mode = resolve_mode(mode)
        self._window_size = window_size
        self._clear_histograms = clear_histograms
        self._state_file = state_file or os.path.join(run_dir, STATE_FILE_NAME)
        os.makedirs(run_dir, exist_ok=True)
        self._run_id = run_id
        config = config or {}
        self._config = config
        hidden = secret_values(config)
        identity = redact_secrets({"name": name, "group": group, "tags": list(tags)}, also_hide=hidden)[0]
        self._init_args = dict(
            project=project or None,
            entity=entity or None,
            name=identity["name"] or None,
            group=identity["group"] or None,
            tags=identity["tags"] or None,
            dir=run_dir,
            config=redact_secrets(config)[0],
            # "allow": reopen the run if W&B knows the id (resume, fixed RUN_ID), else create it.
            resume="allow",
            mode=self._mode,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=not system_metrics),
        )
        self._run = None
        self._abandoned = False
        self._last_write = self._last_histogram_step = -1
        if resume is not None:
            self._started = True
            self._open(resume, resume_iter)

    def _begin_at(self, start_iter: int) -> None:
        self._open(resume=start_iter > 0, resume_iter=start_iter)

    def _open(self, resume: bool, resume_iter: Optional[int]) -> None:
        import wandb

        state = _read_state(self._state_file) if resume else {}
        run_id = self._run_id or state.get("run_id") or _new_run_id()
        same_run = state.get("run_id") == run_id and "last_iteration" in state
        sent = int(state["last_iteration"]) if same_run else None
        with _argv_redacted_for_wandb(self._config):
            self._run = wandb.init(id=run_id, **self._init_args)
        if resume:
            self._last_write = self._held_iteration(sent, resume_iter)
            if self._last_write >= 0:
                logger.info(
                    "W&B run %s resumed; it holds iterations up to %d, logging continues after it.",
                    run_id,
                    self._last_write,
                )
        self._run.define_metric(_ITERATION, hidden=True)
        self._run.define_metric("*", step_metric=_ITERATION)
        self._last_histogram_step = self._last_write
        self._save_state()

    @property
    def run(self):
        """The ``wandb`` run, for logging what the storage does not hold (tables, media).

        Without ``resume`` it opens when training starts (it needs the start iteration to know
        whether to continue the saved run): ask for it inside the trainer's storage, e.g. from
        a hook, or pass ``resume=True`` / ``False`` to open it at construction.
        """
        if self._run is None:
            if not has_event_storage():
                raise RuntimeError(
                    "WandbWriter.run opens when training starts (resume=None): use it from a hook, "
                    "or pass resume=True or resume=False to open it at construction"
                )
            self._begin()
        return self._run

    def _held_iteration(self, sent: Optional[int], resume_iter: Optional[int]) -> int:
        """The last iteration the reopened run holds (-1: none); logging continues after it.

        ``sent`` is the state file's last iteration handed to ``run.log`` (None: no state for
        this run id).
        """
        believed = -1 if sent is None else sent
        if self._mode != "offline":
            # Online, the server's summary knows the last iteration even without our state file.
            summary = self._run.summary.get(_ITERATION)
            return max(believed, int(summary) if isinstance(summary, (int, float)) else -1)
        run_files = self._previous_offline_files()
        if not run_files:
            return believed
        try:
            held = last_logged_iteration(run_files, _ITERATION)
        except (OSError, ValueError) as error:  # never stop training over it
            logger.warning(
                "W&B run %s: could not read its earlier offline run files (%s); logging continues after "
                "iteration %d as %s says, so rows a killed run did not write may be missing.",
                self._run.id,
                error,
                believed,
                self._state_file,
            )
            return believed
        held = -1 if held is None else held
        if sent is None:
            return held
        if held >= sent:  # a higher ``iteration`` can only come from rows user code logged
            return sent
        lost_for_good = ""
        if resume_iter is not None and resume_iter - 1 > held:
            lost_for_good = (
                f"; those up to iteration {min(sent, resume_iter - 1)} precede the checkpoint "
                f"training resumes from ({resume_iter}) and stay missing"
            )
        logger.warning(
            "W&B run %s: its offline run files hold %s, not %d: the killed run lost the rows "
            "wandb-core had not yet written. Logging continues after iteration %d%s.",
            self._run.id,
            f"iterations up to {held}" if held >= 0 else "no rows",
            sent,
            held,
            lost_for_good,
        )
        return held

    def _previous_offline_files(self) -> List[str]:
        """The ``run-<id>.wandb`` files that earlier sessions of this run left in the wandb dir."""
        settings = self._run.settings
        run_file = f"run-{glob.escape(self._run.id)}.wandb"
        pattern = os.path.join(glob.escape(settings.wandb_dir), "offline-run-*", run_file)
        current = os.path.abspath(settings.sync_file)
        return sorted(path for path in glob.glob(pattern) if os.path.abspath(path) != current)

    def _save_state(self) -> None:
        if self._mode != "disabled":
            _write_state(self._state_file, {"run_id": self._run.id, "last_iteration": self._last_write})

    def write(self) -> None:
        try:
            self._write()
        except Exception:
            self._abandon()
            raise

    def _write(self) -> None:
        self._begin()
        storage = get_event_storage()
        rows: Dict[int, Dict[str, Any]] = defaultdict(dict)
        for key, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                rows[itr][key] = value
        new_histograms = [h for h in storage._histograms if h["global_step"] > self._last_histogram_step]
        for params in new_histograms:
            rows[params["global_step"]][params["tag"]] = wandb_histogram(params)
        for itr in sorted(rows):
            rows[itr][_ITERATION] = itr
            self._run.log(rows[itr])
        if new_histograms:
            self._last_histogram_step = max(h["global_step"] for h in new_histograms)
            if self._clear_histograms:
                storage.clear_histograms()
        if rows:
            self._last_write = max(self._last_write, max(rows))
            self._save_state()

    def close(self) -> None:
        if self._abandoned or self._run is None:  # never opened: training never wrote
            return
        try:
            self._run.finish()
        except Exception:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """After a failure (typically: the wandb-core process died), shut wandb down in this
        process. Otherwise wandb's hooks keep talking to the dead process: its import hook
        turns a later ``import`` (orjson, when the loss graph is drawn) into a
        ``ConnectionResetError``, and its exit hook prints a traceback at interpreter exit."""
        self._abandoned = True
        import wandb

        try:
            wandb.teardown()
        except Exception as error:  # the dead connection, again: the hooks are gone already
            logger.debug("wandb.teardown() after a W&B failure: %s", error)
