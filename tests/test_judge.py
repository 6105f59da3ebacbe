"""VLM judge against a fake OpenAI-Responses server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from stablemotion.cli import main
from stablemotion.evaluation.judge import (
    RUBRICS,
    AnswerError,
    JudgeClient,
    JudgeHTTPError,
    Provider,
    compare_methods,
    judge_pairs,
    match_pairs,
    mean_ci,
    overall_score,
    response_schema,
    validate_answer,
)
from stablemotion.io.images import save_image

SIR = RUBRICS["sir"]
KEY = "sk-test-SECRET-0123456789"


def answer(scores: dict | None = None, **over) -> str:
    s = {k: 7 for k in SIR.keys} if scores is None else scores
    doc = {"scores": s, "failure_modes": ["seams"], "confidence": 0.8, "rationale": "fine"}
    doc.update(over)
    return json.dumps(doc)


def ok_body(text: str) -> bytes:
    return json.dumps({"id": "resp_1", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}).encode()


class FakeServer:
    """Serves queued (status, body, headers) responses; records every request."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, bytes, dict[str, str]]] = []
        self.default: tuple[int, bytes, dict[str, str]] = (200, ok_body(answer()), {})
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload, headers = server.queue.pop(0) if server.queue else server.default
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    yield s
    s.close()


@pytest.fixture
def folders(tmp_path: Path, photo: np.ndarray) -> Path:
    for name in ("a", "b", "c"):
        save_image(photo, tmp_path / "inputs" / f"{name}.jpg")
        save_image(photo[::-1].copy(), tmp_path / "ours" / f"{name}.png")
        save_image(photo[:, ::-1].copy(), tmp_path / "theirs" / f"{name}.png")
    return tmp_path


def client_for(server: FakeServer, sleeps: list[float] | None = None, retries: int = 3) -> JudgeClient:
    prov = Provider(server.url, "judge-model", KEY, "$TEST_KEY")
    return JudgeClient(prov, retries=retries, backoff=0.5, sleep=(sleeps.append if sleeps is not None else lambda s: None))


# --------------------------------------------------------------------------- validation
def test_validate_answer_accepts_a_valid_answer_and_computes_the_weighted_overall() -> None:
    scores = {"rectangular_boundary": 10, "content_preservation": 8, "geometry_structure": 6,
              "artifact_control": 4, "naturalness": 2}
    rec = validate_answer(answer(scores), SIR)
    assert rec["overall"] == pytest.approx(0.25 * 10 + 0.25 * 8 + 0.25 * 6 + 0.15 * 4 + 0.10 * 2)
    assert rec["overall"] == overall_score(scores, SIR)
    assert rec["failure_modes"] == ["seams"] and rec["confidence"] == 0.8


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "JSON object"),
        (answer({k: 7 for k in SIR.keys[:-1]}), "missing score 'naturalness'"),
        (answer({**{k: 7 for k in SIR.keys}, "naturalness": 11}), "out of range"),
        (answer({**{k: 7 for k in SIR.keys}, "naturalness": -1}), "out of range"),
        (answer({**{k: 7 for k in SIR.keys}, "naturalness": 6.5}), "must be an integer"),
        (answer({**{k: 7 for k in SIR.keys}, "naturalness": "7"}), "must be an integer"),
        (answer(failure_modes=["ghosts"]), "unknown failure mode"),
        (answer(confidence=1.5), "confidence"),
        (json.dumps({"scores": {k: 7 for k in SIR.keys}}), "missing field 'failure_modes'"),
        (answer(overall=9), "unexpected field"),
    ],
)
def test_validate_answer_rejects_bad_answers(text: str, needle: str) -> None:
    with pytest.raises(AnswerError, match=needle):
        validate_answer(text, SIR)


def test_schema_lists_every_dimension_with_integer_range() -> None:
    for rubric in RUBRICS.values():
        schema = response_schema(rubric)
        props = schema["properties"]["scores"]["properties"]
        assert list(props) == rubric.keys == schema["properties"]["scores"]["required"]
        assert all(p == {**p, "type": "integer", "minimum": 0, "maximum": 10} for p in props.values())
        assert sum(d.weight for d in rubric.dimensions) == pytest.approx(1.0)
    assert [d.weight for d in RUBRICS["rsc"].dimensions] == [0.30, 0.25, 0.20, 0.15, 0.10]


def test_mean_ci_matches_student_t() -> None:
    from scipy import stats

    vals = [6.0, 7.0, 8.5, 5.5, 7.25]
    s = mean_ci(vals)
    lo, hi = stats.t.interval(0.95, len(vals) - 1, loc=np.mean(vals), scale=stats.sem(vals))
    assert s["mean"] == pytest.approx(np.mean(vals)) and s["std"] == pytest.approx(np.std(vals, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((lo, hi))
    assert np.isnan(mean_ci([3.0])["ci_low"]) and mean_ci([])["n"] == 0


def test_compare_methods_win_tie_loss_with_margin() -> None:
    def rec(m: str, n: str, o: float, status: str = "ok") -> dict:
        return {"method": m, "name": n, "overall": o, "status": status}

    recs = [rec("A", "1", 7.0), rec("B", "1", 6.5),  # A by 0.5: win
            rec("A", "2", 7.0), rec("B", "2", 6.8),  # 0.2: tie
            rec("A", "3", 5.0), rec("B", "3", 5.3),  # -0.3: loss
            rec("A", "4", 9.0), rec("B", "4", 0.0, status="invalid")]  # skipped
    c = compare_methods(recs, "A", "B")
    assert (c["win"], c["tie"], c["loss"], c["skipped"], c["images"]) == (1, 1, 1, 1, 3)
    assert c["win_rate"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- provider
def test_provider_from_env_and_file_never_shows_the_key(tmp_path: Path) -> None:
    env = {"STABLEMOTION_JUDGE_MODEL": "m1", "STABLEMOTION_JUDGE_API_KEY": KEY,
           "STABLEMOTION_JUDGE_BASE_URL": "http://127.0.0.1:9/v1/"}
    p = Provider.load(env=env)
    assert (p.base_url, p.model, p.api_key) == ("http://127.0.0.1:9/v1", "m1", KEY)
    assert KEY not in p.describe() and KEY not in repr(p)
    (tmp_path / "prov.json").write_text(json.dumps({"base_url": "http://127.0.0.1:9", "model": "m2",
                                                    "api_key_env": "MY_KEY"}))
    p2 = Provider.load(tmp_path / "prov.json", env={"MY_KEY": KEY})
    assert p2.model == "m2" and p2.api_key == KEY and "$MY_KEY" in p2.describe()
    with pytest.raises(ValueError, match="MY_KEY"):
        Provider.load(tmp_path / "prov.json", env={})
    with pytest.raises(ValueError, match="no judge model"):
        Provider.load(env={})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        Provider.load(tmp_path / "bad.json", env=env)


# --------------------------------------------------------------------------- against the fake server
def test_valid_answers_are_scored_and_summarised(server: FakeServer, folders: Path) -> None:
    pairs = match_pairs(folders / "inputs", folders / "ours")
    report = judge_pairs(client_for(server), pairs, SIR, folders / "out")
    assert len(report.records) == 3 and not report.failures
    req = server.requests[0]
    assert req["path"] == "/v1/responses"
    assert req["headers"]["Authorization"] == f"Bearer {KEY}"
    body = req["body"]
    assert body["model"] == "judge-model" and body["text"]["format"]["type"] == "json_schema"
    assert body["text"]["format"]["schema"] == response_schema(SIR)
    images = [c for c in body["input"][0]["content"] if c["type"] == "input_image"]
    assert len(images) == 2 and images[0]["image_url"].startswith("data:image/png;base64,")
    dims = report.summary["methods"]["ours"]["dimensions"]
    assert dims["overall"]["mean"] == pytest.approx(7.0) and dims["overall"]["n"] == 3
    assert (folders / "out" / "judgements.csv").read_text().startswith("method,name,status,rectangular_boundary")
    assert "| ours | **overall** | 3 | 7.00 |" in (folders / "out" / "summary.md").read_text()
    for f in (folders / "out").iterdir():  # the key is never written
        assert KEY not in f.read_text()


def test_malformed_and_out_of_range_answers_are_reported_not_averaged(server: FakeServer, folders: Path) -> None:
    server.queue = [
        (200, ok_body("{this is not json"), {}),
        (200, ok_body(answer({**{k: 7 for k in SIR.keys}, "naturalness": 12})), {}),
        (200, ok_body(answer({k: 4 for k in SIR.keys})), {}),
    ]
    report = judge_pairs(client_for(server), match_pairs(folders / "inputs", folders / "ours"), SIR, folders / "out")
    assert [r["name"] for r in report.records] == ["c"]
    assert {r["name"]: r["status"] for r in report.failures} == {"a": "invalid", "b": "invalid"}
    assert report.summary["methods"]["ours"]["dimensions"]["overall"]["mean"] == pytest.approx(4.0)
    md = report.markdown
    assert "malformed JSON" in md and "out of range" in md and "Failed pairs (2" in md
    lines = [json.loads(x) for x in (folders / "out" / "judgements.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["invalid", "invalid", "ok"]


def test_429_then_success_retries_with_backoff(server: FakeServer, folders: Path) -> None:
    server.queue = [(429, b'{"error": "slow down"}', {"Retry-After": "2"}),
                    (503, b"unavailable", {}),
                    (200, ok_body(answer()), {})]
    sleeps: list[float] = []
    client = client_for(server, sleeps)
    report = judge_pairs(client, match_pairs(folders / "inputs", folders / "ours", limit=1), SIR, folders / "out")
    assert len(report.records) == 1 and client.attempts == 3
    assert sleeps[0] == 2.0  # Retry-After honoured
    assert 1.0 <= sleeps[1] <= 1.25  # then exponential: 0.5 * 2**1, up to 25% jitter


def test_non_retryable_status_and_exhausted_retries(server: FakeServer) -> None:
    server.queue = [(401, f'{{"error": "bad key {KEY}"}}'.encode(), {})]
    client = client_for(server)
    with pytest.raises(JudgeHTTPError, match="HTTP 401") as exc:
        client.complete({"model": "m"})
    assert KEY not in str(exc.value) and client.attempts == 1
    server.queue = [(500, b"boom", {})] * 3
    sleeps: list[float] = []
    client = client_for(server, sleeps, retries=2)
    with pytest.raises(JudgeHTTPError, match="gave up after 3 attempts"):
        client.complete({"model": "m"})
    assert len(sleeps) == 2


def test_missing_output_file_is_a_reported_failure(server: FakeServer, folders: Path) -> None:
    (folders / "ours" / "b.png").unlink()
    report = judge_pairs(client_for(server), match_pairs(folders / "inputs", folders / "ours"), SIR, folders / "out")
    assert len(server.requests) == 2
    assert [(r["name"], r["status"]) for r in report.failures] == [("b", "missing")]
    assert "no output file for b" in report.markdown


def test_resume_skips_answered_pairs_and_retries_failed(server: FakeServer, folders: Path) -> None:
    pairs = match_pairs(folders / "inputs", folders / "ours")
    server.queue = [(200, ok_body(answer()), {}), (200, ok_body("nope"), {}), (200, ok_body(answer()), {})]
    judge_pairs(client_for(server), pairs, SIR, folders / "out")
    with pytest.raises(FileExistsError, match="--resume"):
        judge_pairs(client_for(server), pairs, SIR, folders / "out")
    n = len(server.requests)
    report = judge_pairs(client_for(server), pairs, SIR, folders / "out", resume=True)
    assert len(server.requests) == n + 1  # only the invalid pair "b" is asked again
    assert server.requests[-1]["body"]["input"][0]["content"][1]["image_url"]
    assert len(report.records) == 3 and not report.failures


def test_two_methods_each_in_its_own_request_with_win_tie_loss(server: FakeServer, folders: Path) -> None:
    pairs = match_pairs(folders / "inputs", folders / "ours", compare=folders / "theirs")
    assert [p.method for p in pairs] == ["ours"] * 3 + ["theirs"] * 3
    hi, lo = {k: 8 for k in SIR.keys}, {k: 6 for k in SIR.keys}
    server.queue = [(200, ok_body(answer(hi)), {}), (200, ok_body(answer(lo)), {}), (200, ok_body(answer(lo)), {}),
                    (200, ok_body(answer(lo)), {}), (200, ok_body(answer(lo)), {}), (200, ok_body(answer(hi)), {})]
    report = judge_pairs(client_for(server), pairs, SIR, folders / "out")
    assert len(server.requests) == 6
    assert all(len([c for c in r["body"]["input"][0]["content"] if c["type"] == "input_image"]) == 2
               for r in server.requests)  # input + one method's output: never the other method
    comp = report.summary["comparison"]
    assert (comp["win"], comp["tie"], comp["loss"]) == (1, 1, 1)
    assert "ours versus theirs" in report.markdown


def test_cli_dry_run_and_real_run(server: FakeServer, folders: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    out = folders / "dry"
    assert main(["judge", str(folders / "inputs"), str(folders / "ours"), "--task", "sir", "--out", str(out),
                 "--dry-run"]) == 0
    doc = json.loads((out / "dry_run.json").read_text())
    assert len(doc["pairs"]) == 3 and "rectangular_boundary" in doc["instructions"]
    assert not server.requests
    monkeypatch.setenv("STABLEMOTION_JUDGE_BASE_URL", server.url)
    monkeypatch.setenv("STABLEMOTION_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("STABLEMOTION_JUDGE_API_KEY", KEY)
    capsys.readouterr()
    code = main(["judge", str(folders / "inputs"), str(folders / "ours"), "--task", "rsc", "--out",
                 str(folders / "real")])
    text = "".join(capsys.readouterr())
    assert KEY not in text
    assert code == 3  # the default answer uses SIR dimensions: every RSC answer is rejected, none averaged
    assert "missing score 'rolling_shutter_suppression'" in (folders / "real" / "summary.md").read_text()
