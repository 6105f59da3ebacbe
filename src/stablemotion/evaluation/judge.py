"""Rule-based perceptual evaluation with a vision-language model as judge (docs/method.md,
"Evaluation protocol").

The judge sees an (input, output) pair and scores the output 0-10 (integers) on the task's
rubric dimensions; the overall score is the weighted sum, computed here (never taken from
the model). It also names failure modes from a fixed list and gives a confidence in [0, 1].

* :data:`RUBRICS` -- the SIR and RSC rubrics (dimensions, weights, failure modes).
* :func:`response_schema` / :func:`build_prompt` -- the structured-output JSON schema and the
  instructions sent with every request.
* :func:`validate_answer` -- every answer is checked (malformed JSON, missing or extra
  fields, non-integer or out-of-range scores, unknown failure modes); a bad answer is
  recorded for its pair and never averaged.
* :class:`Provider` / :class:`JudgeClient` -- any OpenAI-Responses-compatible endpoint
  (``POST {base_url}/responses``) via the standard library; retries with exponential
  backoff (honouring ``Retry-After``) on 408, 429, 5xx and network errors. The API key is
  sent only in the ``Authorization`` header and is masked in every message.
* :func:`judge_pairs` -- scores pairs, appending each answer to ``judgements.jsonl`` as it
  arrives (``resume`` skips pairs with a valid answer), then writes ``judgements.csv``,
  ``summary.md`` and ``summary.json``: mean, std and 95% CI (Student t) per dimension and
  method, and for two methods the per-image win/tie/loss (tie within 0.25).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..io.images import PathLike, atomic_path, list_images, load_image

__all__ = [
    "Dimension",
    "Rubric",
    "RUBRICS",
    "TIE_MARGIN",
    "Pair",
    "match_pairs",
    "response_schema",
    "build_prompt",
    "AnswerError",
    "validate_answer",
    "overall_score",
    "Provider",
    "JudgeClient",
    "JudgeHTTPError",
    "JudgeReport",
    "judge_pairs",
    "write_dry_run",
    "summarize",
    "compare_methods",
    "mean_ci",
]

#: Two methods' overall scores within this margin are a tie (docs/method.md, "Evaluation protocol").
TIE_MARGIN = 0.25
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


# --------------------------------------------------------------------------- rubrics
@dataclass(frozen=True)
class Dimension:
    key: str
    label: str
    weight: float
    description: str


@dataclass(frozen=True)
class Rubric:
    """A task's rubric: weighted dimensions (weights sum to 1) and named failure modes."""

    task: str
    description: str
    dimensions: tuple[Dimension, ...]
    failure_modes: tuple[str, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dimensions]


RUBRICS: dict[str, Rubric] = {
    "sir": Rubric(
        task="sir",
        description=(
            "stitched image rectangling: the input is a stitched panorama with an irregular boundary (empty, usually "
            "black or white, regions around it); the output should be a full rectangular image that keeps all of the "
            "content, with straight lines and natural geometry"
        ),
        dimensions=(
            Dimension("rectangular_boundary", "rectangular boundary", 0.25,
                      "the output fills the whole rectangle: no empty, black or white border regions remain"),
            Dimension("content_preservation", "content preservation", 0.25,
                      "all scene content of the input is kept, nothing is cropped away or invented"),
            Dimension("geometry_structure", "geometry / structure", 0.25,
                      "straight lines stay straight, shapes and proportions are plausible, no bending or stretching"),
            Dimension("artifact_control", "artifact control", 0.15,
                      "no seams, tears, duplicated content, blur or noise introduced by the warp"),
            Dimension("naturalness", "naturalness", 0.10, "the output looks like a natural photograph"),
        ),
        failure_modes=("white_or_empty_border", "excessive_cropping", "hallucinated_content", "geometric_distortion",
                       "line_discontinuity", "seams", "blur_or_noise", "duplicated_content", "color_shift"),
    ),
    "rsc": Rubric(
        task="rsc",
        description=(
            "rolling-shutter correction: the input was captured with a rolling shutter while the camera moved, so "
            "vertical structures are skewed or wobble; the output should look like a global-shutter image of the "
            "same scene"
        ),
        dimensions=(
            Dimension("rolling_shutter_suppression", "rolling-shutter suppression", 0.30,
                      "skew, wobble and jello distortions of the input are removed"),
            Dimension("geometry_structure", "geometry / structure", 0.25,
                      "straight lines are straight, vertical structures vertical, shapes plausible"),
            Dimension("content_preservation", "content preservation", 0.20,
                      "scene content is kept, nothing is cropped away or invented"),
            Dimension("artifact_control", "artifact control", 0.15,
                      "no black/empty regions, seams, tears, blur or noise introduced by the warp"),
            Dimension("naturalness", "naturalness", 0.10, "the output looks like a natural photograph"),
        ),
        failure_modes=("residual_rolling_shutter", "geometric_distortion", "black_or_empty_regions",
                       "excessive_cropping", "hallucinated_content", "line_discontinuity", "blur_or_noise",
                       "color_shift"),
    ),
}
for _r in RUBRICS.values():
    assert abs(sum(d.weight for d in _r.dimensions) - 1.0) < 1e-9, _r.task


def response_schema(rubric: Rubric) -> dict[str, Any]:
    """The JSON schema of one answer (OpenAI structured outputs, strict mode)."""
    return {
        "type": "object",
        "properties": {
            "scores": {
                "type": "object",
                "properties": {d.key: {"type": "integer", "minimum": 0, "maximum": 10,
                                       "description": d.description} for d in rubric.dimensions},
                "required": rubric.keys,
                "additionalProperties": False,
            },
            "failure_modes": {"type": "array", "items": {"type": "string", "enum": list(rubric.failure_modes)}},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "rationale": {"type": "string"},
        },
        "required": ["scores", "failure_modes", "confidence", "rationale"],
        "additionalProperties": False,
    }


def build_prompt(rubric: Rubric) -> str:
    """The instructions of every request (the images follow: first the input, then the output)."""
    dims = "\n".join(f"- {d.key} ({d.label}, weight {d.weight:.2f}): {d.description}" for d in rubric.dimensions)
    return (
        f"You are a strict judge of image rectification. Task: {rubric.description}.\n\n"
        "You receive two images: first the INPUT, then the OUTPUT of a method. Judge only the OUTPUT, using the INPUT "
        "as reference. Score each dimension with an integer from 0 (fails completely) to 10 (perfect):\n"
        f"{dims}\n\n"
        "List every failure mode you see in the output, using only these names: "
        f"{', '.join(rubric.failure_modes)} (an empty list if none). Give your confidence in [0, 1] and a one- or "
        "two-sentence rationale. Answer with JSON only, matching the given schema."
    )


# --------------------------------------------------------------------------- validation
class AnswerError(ValueError):
    """A judge answer that fails validation; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_answer(text: str, rubric: Rubric) -> dict[str, Any]:
    """Parse and check one answer; return ``{"scores", "failure_modes", "confidence", "rationale", "overall"}``.

    Raises:
        AnswerError: malformed JSON, missing/extra fields, scores that are not integers in
            0..10, unknown failure modes, confidence outside [0, 1] (all problems listed).
    """
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as exc:
        raise AnswerError([f"malformed JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise AnswerError([f"answer must be a JSON object, got {type(data).__name__}"])
    problems = []
    for key in ("scores", "failure_modes", "confidence"):
        if key not in data:
            problems.append(f"missing field {key!r}")
    extra = sorted(set(data) - {"scores", "failure_modes", "confidence", "rationale"})
    if extra:
        problems.append(f"unexpected field(s) {extra}")
    scores = data.get("scores")
    if "scores" in data and not isinstance(scores, dict):
        problems.append("'scores' must be an object")
    elif isinstance(scores, dict):
        for k in rubric.keys:
            if k not in scores:
                problems.append(f"missing score {k!r}")
                continue
            v = scores[k]
            if isinstance(v, bool) or not isinstance(v, int):
                if isinstance(v, float) and v.is_integer():
                    v = int(v)
                else:
                    problems.append(f"score {k!r} must be an integer 0-10, got {v!r}")
                    continue
            if not 0 <= v <= 10:
                problems.append(f"score {k!r} = {v} is out of range 0-10")
        unknown = sorted(set(scores) - set(rubric.keys))
        if unknown:
            problems.append(f"unknown score(s) {unknown}")
    modes = data.get("failure_modes")
    if "failure_modes" in data:
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            problems.append("'failure_modes' must be a list of strings")
        else:
            bad = sorted(set(modes) - set(rubric.failure_modes))
            if bad:
                problems.append(f"unknown failure mode(s) {bad}")
    conf = data.get("confidence")
    if "confidence" in data and (isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0 <= conf <= 1):
        problems.append(f"'confidence' must be a number in [0, 1], got {conf!r}")
    rationale = data.get("rationale", "")
    if not isinstance(rationale, str):
        problems.append("'rationale' must be a string")
    if problems:
        raise AnswerError(problems)
    clean = {k: int(scores[k]) for k in rubric.keys}
    return {"scores": clean, "failure_modes": list(modes), "confidence": float(conf), "rationale": rationale,
            "overall": overall_score(clean, rubric)}


def overall_score(scores: Mapping[str, int], rubric: Rubric) -> float:
    """Weighted sum of the dimension scores (0-10)."""
    return float(sum(d.weight * scores[d.key] for d in rubric.dimensions))


# --------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """One (input, output) pair of one method; ``output_path`` is None when the output is missing."""

    name: str
    method: str
    input_path: Path
    output_path: Path | None

    @property
    def key(self) -> str:
        return f"{self.method}/{self.name}"


def match_pairs(inputs: PathLike, results: PathLike, compare: PathLike | None = None,
                limit: int | None = None) -> list[Pair]:
    """Pairs matched by file stem: one per input image and method.

    The method names are the results folders' names (``A``/``B`` when they coincide). An
    input without an output gives a pair with ``output_path=None`` (reported, not dropped).
    """
    ins = list_images(inputs)
    if not ins:
        raise ValueError(f"no images in {inputs}")
    folders = [Path(results)] + ([Path(compare)] if compare is not None else [])
    names = [f.resolve().name or str(f) for f in folders]
    if len(set(names)) < len(names):
        names = ["A", "B"][: len(folders)]
    pairs = []
    stems = sorted(ins)[: limit if limit else None]
    for folder, method in zip(folders, names, strict=True):
        outs = list_images(folder)
        if not outs:
            raise ValueError(f"no images in {folder}")
        if not set(outs) & set(ins):
            raise ValueError(f"no file in {folder} matches an input in {inputs} by name (without extension)")
        pairs += [Pair(s, method, ins[s], outs.get(s)) for s in stems]
    return pairs


def _image_data_url(path: Path, max_side: int) -> str:
    img = Image.fromarray(load_image(path))
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_body(model: str, rubric: Rubric, input_url: str, output_url: str,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Responses API request of one pair (structured JSON output with :func:`response_schema`)."""
    body: dict[str, Any] = {
        "model": model,
        "instructions": build_prompt(rubric),
        "input": [{
            "role": "user",
            "content": [
                {"type": "input_text", "text": "INPUT image:"},
                {"type": "input_image", "image_url": input_url},
                {"type": "input_text", "text": "OUTPUT image to judge:"},
                {"type": "input_image", "image_url": output_url},
            ],
        }],
        "text": {"format": {"type": "json_schema", "name": f"{rubric.task}_judgement",
                            "schema": response_schema(rubric), "strict": True}},
    }
    body.update(dict(extra or {}))
    return body


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


# --------------------------------------------------------------------------- running
def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(rec, dict) and "name" in rec and "method" in rec:
            out.append(rec)
    return out


def write_dry_run(pairs: Sequence[Pair], rubric: Rubric, out: PathLike) -> Path:
    """``OUT/dry_run.json``: the pairs, the instructions and the schema (no images, no key)."""
    path = Path(out) / "dry_run.json"
    doc = {
        "task": rubric.task,
        "instructions": build_prompt(rubric),
        "schema": response_schema(rubric),
        "pairs": [{"name": p.name, "method": p.method, "input": str(p.input_path),
                   "output": None if p.output_path is None else str(p.output_path)} for p in pairs],
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return path


@dataclass
class JudgeReport:
    """Result of :func:`judge_pairs`: valid records, failures, summary text."""

    records: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    summary: dict[str, Any]
    markdown: str


def judge_pairs(client: JudgeClient, pairs: Sequence[Pair], rubric: Rubric, out: PathLike, resume: bool = False,
                max_side: int = 1024, log: Callable[[str], None] | None = None) -> JudgeReport:
    """Score every pair; append each answer to ``OUT/judgements.jsonl``; write the summaries.

    Without ``resume`` an existing ``judgements.jsonl`` is an error (never mixed silently).
    With ``resume`` the pairs with a valid answer are skipped; failed ones are retried.
    """
    out = Path(out)
    jsonl = out / "judgements.jsonl"
    if jsonl.exists() and not resume:
        raise FileExistsError(f"{jsonl} exists: pass --resume to continue it, or use a new --out folder")
    done = {f"{r['method']}/{r['name']}" for r in _read_jsonl(jsonl) if r.get("status") == "ok"}
    say = log or (lambda _msg: None)
    for pair in pairs:
        if pair.key in done:
            continue
        rec: dict[str, Any] = {"name": pair.name, "method": pair.method, "task": rubric.task,
                               "input": str(pair.input_path),
                               "output": None if pair.output_path is None else str(pair.output_path),
                               "judge_model": client.provider.model}
        if pair.output_path is None:
            rec.update(status="missing", error=f"no output file for {pair.name} in the {pair.method} results")
        else:
            try:
                body = request_body(client.provider.model, rubric, _image_data_url(pair.input_path, max_side),
                                    _image_data_url(pair.output_path, max_side), client.provider.extra_body)
                text = client.complete(body)
            except JudgeHTTPError as exc:
                rec.update(status="error", error=client.provider.mask(str(exc)))
            except ValueError as exc:  # unreadable image
                rec.update(status="error", error=str(exc))
            else:
                try:
                    rec.update(status="ok", **validate_answer(text, rubric))
                except AnswerError as exc:
                    rec.update(status="invalid", error=str(exc), raw=text[:2000])
        if rec["status"] != "ok":
            say(f"{pair.key}: {rec['status']}: {rec['error']}")
        _append_jsonl(jsonl, rec)
    latest: dict[str, dict[str, Any]] = {}
    for r in _read_jsonl(jsonl):  # the last answer of a pair wins, except that a valid one is never replaced
        k = f"{r['method']}/{r['name']}"
        if k not in latest or latest[k].get("status") != "ok":
            latest[k] = r
    wanted = {p.key for p in pairs}
    recs = [r for k, r in latest.items() if k in wanted]
    ok = [r for r in recs if r.get("status") == "ok"]
    failures = [r for r in recs if r.get("status") != "ok"]
    _write_csv(recs, rubric, out / "judgements.csv")
    summary = summarize(ok, rubric)
    methods = sorted({p.method for p in pairs}, key=lambda m: [p.method for p in pairs].index(m))
    if len(methods) == 2:
        summary["comparison"] = compare_methods(recs, methods[0], methods[1])
    summary["failures"] = [{"method": r["method"], "name": r["name"], "status": r["status"], "error": r.get("error")}
                           for r in failures]
    summary["judge_model"] = client.provider.model
    md = _summary_markdown(summary, rubric, methods)
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(md)
    return JudgeReport(ok, failures, summary, md)


def _write_csv(recs: Sequence[dict[str, Any]], rubric: Rubric, path: Path) -> None:
    fields = ["method", "name", "status", *rubric.keys, "overall", "confidence", "failure_modes", "error"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in sorted(recs, key=lambda r: (r["method"], r["name"])):
            s = r.get("scores") or {}
            w.writerow([r["method"], r["name"], r["status"], *[s.get(k, "") for k in rubric.keys],
                        "" if "overall" not in r else f"{r['overall']:.4f}", r.get("confidence", ""),
                        ";".join(r.get("failure_modes") or []), r.get("error", "")])


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """``{"n", "mean", "std" (ddof 1), "ci_low", "ci_high"}``: Student-t interval of the mean."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def summarize(records: Sequence[dict[str, Any]], rubric: Rubric) -> dict[str, Any]:
    """Per method: mean/std/95% CI of each dimension, the overall score and the confidence,
    plus how often each failure mode was named. Only valid records are passed in."""
    out: dict[str, Any] = {"task": rubric.task, "methods": {}}
    for method in sorted({r["method"] for r in records}):
        rs = [r for r in records if r["method"] == method]
        dims = {k: mean_ci([r["scores"][k] for r in rs]) for k in rubric.keys}
        dims["overall"] = mean_ci([r["overall"] for r in rs])
        modes = {m: sum(m in r["failure_modes"] for r in rs) / len(rs) for m in rubric.failure_modes}
        out["methods"][method] = {"n": len(rs), "dimensions": dims,
                                  "confidence": mean_ci([r["confidence"] for r in rs]), "failure_mode_rate": modes}
    return out


def compare_methods(records: Sequence[dict[str, Any]], a: str, b: str, margin: float = TIE_MARGIN) -> dict[str, Any]:
    """Per-image win/tie/loss of method ``a`` against ``b`` on the overall score.

    ``a`` wins an image when its overall is higher by more than ``margin``; a tie otherwise
    within the margin. Images where either answer is missing/invalid are counted apart.
    """
    by = {(r["method"], r["name"]): r for r in records}
    names = sorted({r["name"] for r in records})
    win = tie = loss = skipped = 0
    per_image = []
    for n in names:
        ra, rb = by.get((a, n)), by.get((b, n))
        if not (ra and rb and ra.get("status") == "ok" and rb.get("status") == "ok"):
            skipped += 1
            continue
        d = ra["overall"] - rb["overall"]
        outcome = "win" if d > margin else ("loss" if d < -margin else "tie")
        win += outcome == "win"
        tie += outcome == "tie"
        loss += outcome == "loss"
        per_image.append({"name": n, a: ra["overall"], b: rb["overall"], "outcome": outcome})
    total = win + tie + loss

    def rate(k: int) -> float:
        return k / total if total else math.nan

    return {"a": a, "b": b, "margin": margin, "images": total, "skipped": skipped, "win": win, "tie": tie,
            "loss": loss, "win_rate": rate(win), "tie_rate": rate(tie), "loss_rate": rate(loss), "per_image": per_image}


def _summary_markdown(summary: dict[str, Any], rubric: Rubric, methods: Sequence[str]) -> str:
    def f(v: float) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"

    lines = [f"# VLM judge ({rubric.task.upper()}, judge model {summary.get('judge_model')})", "",
             "Scores 0-10; overall = " + " + ".join(f"{d.weight:.2f} x {d.key}" for d in rubric.dimensions)
             + ". Mean, sample std and 95% CI (Student t) over the valid answers.", ""]
    head = ["method", "dimension", "n", "mean", "std", "95% CI"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        info = summary["methods"].get(m)
        if info is None:
            lines.append(f"| {m} | (no valid answers) | 0 | n/a | n/a | n/a |")
            continue
        for k in [*rubric.keys, "overall"]:
            s = info["dimensions"][k]
            lines.append(f"| {m} | {'**overall**' if k == 'overall' else k} | {s['n']} | {f(s['mean'])} | {f(s['std'])} | "
                         f"[{f(s['ci_low'])}, {f(s['ci_high'])}] |")
    comp = summary.get("comparison")
    if comp:
        lines += ["", f"## {comp['a']} versus {comp['b']} (per image, tie within {comp['margin']})", "",
                  "| win | tie | loss | images | skipped (missing/invalid) |", "|---|---|---|---|---|",
                  f"| {comp['win']} ({f(100 * comp['win_rate'])}%) | {comp['tie']} ({f(100 * comp['tie_rate'])}%) | "
                  f"{comp['loss']} ({f(100 * comp['loss_rate'])}%) | {comp['images']} | {comp['skipped']} |"]
    fails = summary.get("failures") or []
    if fails:
        lines += ["", f"## Failed pairs ({len(fails)}; excluded from every statistic)", ""]
        lines += [f"- {x['method']}/{x['name']}: {x['status']}: {x['error']}" for x in fails]
    return "\n".join(lines) + "\n"
