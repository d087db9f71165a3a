"""Keep secrets (W&B API keys, tokens, passwords) out of every config we write or upload.

One rule set for the dumped ``config.yaml`` and for the config sent to W&B: a value is replaced
by ``"<redacted>"`` when its key sounds secret, when it contains the value of a secret-named
environment variable (``WANDB_API_KEY``, ...), or when it holds a token shaped like a W&B API key
(40+ letters and digits, mixing both).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Tuple

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# W&B API keys: an optional "<host>-" prefix, then 40+ characters (legacy keys: 40 hex digits).
_KEY_SHAPED = re.compile(r"[A-Za-z0-9]{40,}")


def _key_shaped(value: str) -> bool:
    return any(
        re.search(r"\d", token) and re.search(r"[A-Za-z]", token) for token in _KEY_SHAPED.findall(value)
    )


def redact_secrets(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """A copy of the nested ``config`` with secrets replaced, and the dotted keys replaced."""
    env_secrets = [v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8]
    redacted: List[str] = []

    def clean(path: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): clean(f"{path}.{k}" if path else str(k), v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(path, v) for v in value]
        secret_name = bool(_SECRET_NAME.search(path.rsplit(".", 1)[-1])) and value not in (None, "")
        secret_text = isinstance(value, str) and (
            any(secret in value for secret in env_secrets) or _key_shaped(value)
        )
        if secret_name or secret_text:
            redacted.append(path)
            return REDACTED
        return value

    return clean("", config), redacted
