"""The judge's HTTP client: any OpenAI-Responses-compatible endpoint (``POST {base_url}/responses``)
via the standard library, with retries and exponential backoff (honouring ``Retry-After``) on 408,
429, 5xx and network errors. The API key is sent only in the ``Authorization`` header and is
masked in every message (:mod:`stablemotion.evaluation.judge`).
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.images import PathLike

__all__ = ["Provider", "JudgeClient", "JudgeHTTPError", "RETRY_STATUS"]

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# --------------------------------------------------------------------------- client
@dataclass
class Provider:
    """An OpenAI-Responses-compatible endpoint. ``api_key`` is never printed or saved."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    key_source: str = "none"
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    extra_body: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: PathLike | None = None, model: str | None = None,
             env: Mapping[str, str] | None = None) -> Provider:
        """From a JSON provider file and/or the environment.

        File keys: ``base_url``, ``model``, ``api_key_env`` (name of the variable holding the
        key; preferred) or ``api_key``, optional ``headers`` and ``extra_body`` (merged into
        every request, e.g. ``{"temperature": 0}``). Environment: ``STABLEMOTION_JUDGE_BASE_URL``
        (or ``OPENAI_BASE_URL``; default ``https://api.openai.com/v1``),
        ``STABLEMOTION_JUDGE_MODEL``, ``STABLEMOTION_JUDGE_API_KEY`` (or ``OPENAI_API_KEY``).
        """
        env = os.environ if env is None else env
        cfg: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"provider file not found: {p}")
            try:
                cfg = json.loads(p.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"provider file {p} is not valid JSON: {exc}") from None
            if not isinstance(cfg, dict):
                raise ValueError(f"provider file {p} must hold a JSON object")
            unknown = sorted(set(cfg) - {"base_url", "model", "api_key", "api_key_env", "headers", "extra_body"})
            if unknown:
                raise ValueError(f"provider file {p}: unknown key(s) {unknown}")
        base = cfg.get("base_url") or env.get("STABLEMOTION_JUDGE_BASE_URL") or env.get("OPENAI_BASE_URL") \
            or "https://api.openai.com/v1"
        name = model or cfg.get("model") or env.get("STABLEMOTION_JUDGE_MODEL")
        if not name:
            raise ValueError("no judge model: set it in the provider file (\"model\"), STABLEMOTION_JUDGE_MODEL, "
                             "or --model-name")
        key, source = None, "none"
        if cfg.get("api_key_env"):
            key, source = env.get(cfg["api_key_env"]), f"${cfg['api_key_env']}"
            if not key:
                raise ValueError(f"the provider file names the key variable {cfg['api_key_env']} but it is not set")
        elif cfg.get("api_key"):
            key, source = str(cfg["api_key"]), "provider file"
        else:
            for var in ("STABLEMOTION_JUDGE_API_KEY", "OPENAI_API_KEY"):
                if env.get(var):
                    key, source = env[var], f"${var}"
                    break
        return cls(str(base).rstrip("/"), str(name), key, source, dict(cfg.get("headers") or {}),
                   dict(cfg.get("extra_body") or {}))

    def describe(self) -> str:
        """Endpoint, model and where the key came from (never the key)."""
        return f"{self.base_url}/responses, model {self.model}, API key {'from ' + self.key_source if self.api_key else 'not set'}"

    def mask(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        return text.replace(self.api_key, "***") if self.api_key else text


class JudgeHTTPError(RuntimeError):
    """A request that failed for good (non-retryable status, or retries exhausted)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JudgeClient:
    """POSTs Responses API requests with retries; returns the answer text.

    Args:
        provider: the endpoint.
        retries: extra attempts after the first on 408/429/5xx and network errors.
        backoff: first wait in seconds; doubles each retry (with up to 25% jitter);
            a ``Retry-After`` header (seconds) takes precedence, capped at ``max_wait``.
        timeout: seconds per request.
        sleep: the sleep function (tests pass a recorder).
    """

    def __init__(self, provider: Provider, retries: int = 4, backoff: float = 1.0, max_wait: float = 60.0,
                 timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.provider = provider
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.timeout = timeout
        self.sleep = sleep
        self.attempts = 0  # total HTTP attempts made (for reports and tests)

    def _post(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **self.provider.headers}
        if self.provider.api_key:
            headers["Authorization"] = f"Bearer {self.provider.api_key}"
        req = urllib.request.Request(f"{self.provider.base_url}/responses", data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers or {}), exc.read() if exc.fp is not None else b""

    def complete(self, body: dict[str, Any]) -> str:
        """Send one request; return the output text. Raises :class:`JudgeHTTPError`."""
        last = ""
        for attempt in range(self.retries + 1):
            self.attempts += 1
            wait = self.backoff * 2**attempt * (1 + 0.25 * random.random())
            try:
                status, headers, payload = self._post(body)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                last = f"network error: {self.provider.mask(str(exc))}"
            else:
                if status == 200:
                    return self.provider.mask(_output_text(payload))
                snippet = self.provider.mask(payload[:300].decode("utf-8", "replace"))
                last = f"HTTP {status}: {snippet}"
                if status not in RETRY_STATUS:
                    raise JudgeHTTPError(last, status)
                ra = {k.lower(): v for k, v in headers.items()}.get("retry-after")
                if ra is not None:
                    try:
                        wait = float(ra)
                    except ValueError:
                        pass
            if attempt < self.retries:
                self.sleep(min(max(wait, 0.0), self.max_wait))
        raise JudgeHTTPError(f"gave up after {self.retries + 1} attempts; last: {last}")


def _output_text(payload: bytes) -> str:
    """The answer text of a Responses API body (``output_text``, or the message parts)."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise JudgeHTTPError(f"the endpoint returned a body that is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JudgeHTTPError("the endpoint returned a JSON body that is not an object")
    if data.get("error"):
        raise JudgeHTTPError(f"the endpoint returned an error: {str(data['error'])[:300]}")
    if isinstance(data.get("output_text"), str):
        return data["output_text"]
    parts, refusals = [], []
    for item in data.get("output") or []:
        if not isinstance(item, dict):
            continue
        for c in item.get("content") or []:
            if isinstance(c, dict) and c.get("type") == "output_text":
                parts.append(str(c.get("text", "")))
            elif isinstance(c, dict) and c.get("type") == "refusal":
                refusals.append(str(c.get("refusal", "")))
    if parts:
        return "".join(parts)
    if refusals:
        raise JudgeHTTPError(f"the judge refused: {refusals[0][:300]}")
    raise JudgeHTTPError(f"no output text in the response (status {data.get('status')!r})")


