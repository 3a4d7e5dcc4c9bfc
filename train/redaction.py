"""Keep secrets from the environment (WANDB_API_KEY, HF_TOKEN, any *TOKEN*/*SECRET*/*PASSWORD*/*_KEY) out of log
lines, the saved config and the wandb config.

Nothing in the pipeline reads those values into its config or logs on purpose; this is the guard against a
library or an interpolation (`${oc.env:HF_TOKEN}`) that would. Values are replaced by `***<NAME>` so the reader
still sees which secret was there.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values ("1", "true") are flags, and replacing them would garble every log line


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{value: name} of the environment's secrets, longest value first (so a secret inside another is handled)."""
    env = os.environ if environ is None else environ
    found = {v: k for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_LENGTH}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def redact(text: str, secrets: Mapping[str, str] | None = None) -> str:
    for value, name in (secret_values() if secrets is None else secrets).items():
        if value in text:
            text = text.replace(value, f"***{name}")
    return text


def redact_config(obj: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """A copy of a plain config container with every string scrubbed."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, dict):
        return {k: redact_config(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_config(v, secrets) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Mapping[str, str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_log_redaction() -> None:
    """Add the filter to every handler that exists now (root's, Hydra's, DeepSpeed's own); idempotent."""
    secrets = secret_values()
    if not secrets:
        return
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(secrets))
