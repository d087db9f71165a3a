"""Keep secrets (W&B API keys, tokens, passwords) out of everything we write or upload.

One rule set for the dumped ``config.yaml``, the config and run name/group/tags sent to W&B,
and the command line that log.txt, train_history.json and W&B's run metadata record: a value is
replaced by ``"<redacted>"`` when its key sounds secret, when it contains the value of a
secret-named environment variable (``WANDB_API_KEY``, ...), or when it holds a token shaped like
a W&B API key (40+ letters and digits, mixing both). A value hidden in the config is hidden on
the command line too (``secret_values`` + ``redact_argv``), so no output shows what another hides.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# W&B API keys: an optional "<host>-" prefix, then 40+ characters (legacy keys: 40 hex digits).
_KEY_SHAPED = re.compile(r"[A-Za-z0-9]{40,}")


def _key_shaped(value: str) -> bool:
    return any(
        re.search(r"\d", token) and re.search(r"[A-Za-z]", token) for token in _KEY_SHAPED.findall(value)
    )


def _env_secrets() -> List[str]:
    return [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8]


def _secret_text(value: str, known: Sequence[str]) -> bool:
    """Whether ``value`` holds an environment secret, a key-shaped token or a ``known`` secret."""
    return any(secret in value for secret in known if secret) or _key_shaped(value)


def _redact(config: Mapping[str, Any], also_hide: Sequence[str]) -> Tuple[Dict[str, Any], List[str], List[str]]:
    known = [*_env_secrets(), *also_hide]
    paths: List[str] = []
    hidden: List[str] = []

    def clean(path: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(f"{path}.{k}" if path else str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(path, v) for v in value]
        secret_name = bool(_SECRET_NAME.search(path.rsplit(".", 1)[-1])) and value not in (None, "")
        if secret_name or (isinstance(value, str) and _secret_text(value, known)):
            paths.append(path)
            if value is not None and not isinstance(value, bool):
                hidden.append(str(value))
            return REDACTED
        return value

    return clean("", config), paths, hidden


def redact_secrets(config: Mapping[str, Any], also_hide: Sequence[str] = ()) -> Tuple[Dict[str, Any], List[str]]:
    """A copy of the nested ``config`` with secrets replaced, and the dotted keys replaced.
    ``also_hide``: values known to be secret elsewhere (``secret_values`` of the run config)."""
    clean, paths, _ = _redact(config, also_hide)
    return clean, paths


def secret_values(config: Mapping[str, Any]) -> List[str]:
    """The values (as text) that ``redact_secrets(config)`` hides."""
    return _redact(config, ())[2]


def _secret_named(key: str) -> bool:
    """Whether the last dotted part of ``key`` (``MY.API_KEY``, ``--hf-token``) sounds secret."""
    return bool(_SECRET_NAME.search(key.rsplit(".", 1)[-1]))


def redact_argv(argv: Sequence[str], config: Optional[Mapping[str, Any]] = None) -> List[str]:
    """``argv`` with every argument that holds a secret replaced by ``<redacted>``: by the
    rules above, the value after a secret-named ``KEY`` (or in one argument, ``--hf_token=...``
    and ``wandb.api_key=...``, which read ``--hf_token=<redacted>``), and any value ``config``'s
    redaction hides (``WANDB.GROUP sk-...`` is hidden here because config.yaml hides it)."""
    known = [*_env_secrets(), *(secret_values(config) if config else ())]
    redacted = []
    for i, arg in enumerate(argv):
        key, equals, _ = arg.partition("=")
        if equals and " " not in key and _secret_named(key):
            redacted.append(f"{key}={REDACTED}")
            continue
        # A KEY=VALUE argument holds its own value: the next argument is not its value.
        after_secret_key = i > 0 and "=" not in argv[i - 1] and _secret_named(argv[i - 1])
        redacted.append(REDACTED if after_secret_key or _secret_text(arg, known) else arg)
    return redacted
