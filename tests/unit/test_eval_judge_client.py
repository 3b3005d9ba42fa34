"""The chat-completions judge client against a local server on 127.0.0.1 (no internet)."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from arm.data.shapeworld.render import render
from arm.data.shapeworld.scene import Scene
from arm.eval.common import Run
from arm.eval.interface import DummyModel
from arm.eval.judges import JudgeReplyError, VLMJudge, parse_score_pair, parse_wise_reply
from arm.eval.openai_client import ChatClient, JudgeUnavailable
from arm.eval.wise import run_wise


class FakeJudge(BaseHTTPRequestHandler):
    """Replies with ``server.reply``; the first ``server.failures`` requests get HTTP 503."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        if len(self.server.requests) <= self.server.failures:
            self.send_error(503, "busy")
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": self.server.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    httpd.requests, httpd.failures, httpd.reply = [], 0, "Consistency: 2\nRealism: 1\nAesthetic Quality: 0"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _url(httpd):
    return f"http://127.0.0.1:{httpd.server_address[1]}/v1"


def test_client_retries_and_sends_chat_completion(server, monkeypatch):
    monkeypatch.setenv("ARM_TEST_KEY", "secret")
    server.failures = 2
    client = ChatClient(_url(server), model="judge-vl", api_key_env="ARM_TEST_KEY", retries=2, backoff_s=0.0)
    image = render(Scene(objects=[], background="gray", resolution=32))
    reply = VLMJudge(client).wise(image, {"Prompt": "a cat", "Explanation": "a cat"})
    assert (reply["consistency"], reply["realism"], reply["aesthetic_quality"]) == (2, 1, 0)
    assert len(server.requests) == 3  # two 503s, then the answer
    sent = server.requests[-1]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer secret"
    assert sent["body"]["model"] == "judge-vl" and sent["body"]["temperature"] == 0.0
    parts = sent["body"]["messages"][0]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_unreachable_and_failing_judges_raise_clearly(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(JudgeUnavailable, match=f"127.0.0.1:{closed_port}.*after 2 attempt"):
        ChatClient(f"http://127.0.0.1:{closed_port}/v1", retries=1, backoff_s=0.0, timeout_s=2).complete([])
    server.failures = 10
    with pytest.raises(JudgeUnavailable, match="HTTP 503"):
        ChatClient(_url(server), retries=1, backoff_s=0.0).complete([])
    with pytest.raises(ValueError, match="http"):
        ChatClient("127.0.0.1:8000")


def test_reply_parsers():
    assert parse_wise_reply("**Consistency**: 1\nRealism: 2\naesthetic quality: 0") == {
        "consistency": 1, "realism": 2, "aesthetic_quality": 0}
    assert parse_score_pair('{"score": [7, 9.5], "reasoning": "ok"}') == (7, 9.5)
    with pytest.raises(JudgeReplyError):
        parse_wise_reply("Consistency: 2")
    with pytest.raises(JudgeReplyError):
        parse_score_pair('{"score": [12, 3]}')


def test_wise_with_vlm_judge_end_to_end(server, tmp_path):
    records = [{"prompt_id": 3, "Prompt": "The plant often gifted on Mother's Day", "Explanation": "Carnations",
                "Category": "Cultural knowledge", "Subcategory": "Festival"}]
    (tmp_path / "cultural_common_sense.json").write_text(json.dumps(records))
    run = Run(DummyModel(), VLMJudge(ChatClient(_url(server), retries=0)), progress=False)
    summary = run_wise(run, tmp_path / "cultural_common_sense.json", tmp_path / "out")
    assert summary["per_group"]["CULTURE"]["value"] == pytest.approx((0.7 * 2 + 0.2 * 1 + 0.1 * 0) / 2)
    sent_text = server.requests[0]["body"]["messages"][0]["content"][0]["text"]
    assert "Mother's Day" in sent_text and "Carnations" in sent_text
    assert np.isfinite(summary["overall"]["value"])
    server.reply = "I cannot judge this."
    failed = run_wise(run, tmp_path / "cultural_common_sense.json", tmp_path / "out2")
    assert failed["judge_failed"] == 1 and failed["overall"]["value"] is None
