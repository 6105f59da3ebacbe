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
The rubric side lives in :mod:`.judge_rubric`, the HTTP client in :mod:`.judge_client`; their
names are importable from here too.

* :func:`judge_pairs` -- scores pairs, appending each answer to ``judgements.jsonl`` as it
  arrives (``resume`` skips pairs with a valid answer), then writes ``judgements.csv``,
  ``summary.md`` and ``summary.json``: mean, std and 95% CI (Student t) per dimension and
  method, and for two methods the per-image win/tie/loss (tie within 0.25).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import PathLike, atomic_path
from .judge_client import RETRY_STATUS, JudgeClient, JudgeHTTPError, Provider
from .judge_rubric import (
    RUBRICS,
    TIE_MARGIN,
    AnswerError,
    Dimension,
    Pair,
    Rubric,
    _image_data_url,
    build_prompt,
    match_pairs,
    overall_score,
    request_body,
    response_schema,
    validate_answer,
)

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

_ = (RETRY_STATUS, request_body)  # kept importable from here (older imports)


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
