"""The judge's rubric side: rubrics, the structured-output schema and prompt, answer validation,
the (input, output) pairs and the request body (:mod:`stablemotion.evaluation.judge`).

* :data:`RUBRICS` -- the SIR and RSC rubrics (dimensions, weights, failure modes).
* :func:`response_schema` / :func:`build_prompt` -- the JSON schema and the instructions.
* :func:`validate_answer` -- every answer is checked; a bad answer is recorded, never averaged.
* :func:`match_pairs` / :func:`request_body` -- the pairs to judge and one request's body.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..io.images import PathLike, list_images, load_image

__all__ = [
    "Dimension", "Rubric", "RUBRICS", "TIE_MARGIN", "Pair", "match_pairs", "response_schema", "build_prompt",
    "AnswerError", "validate_answer", "overall_score", "request_body",
]


#: Two methods' overall scores within this margin are a tie (docs/method.md, "Evaluation protocol").
TIE_MARGIN = 0.25


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


