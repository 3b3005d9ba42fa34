"""A client for an OpenAI-compatible chat-completions endpoint, used as a VLM judge for real benchmark prompts.

WISE (``gpt_eval.py``) and GEdit-Bench (VIEScore) score images by asking a VLM (GPT-4o, Qwen2.5-VL behind vLLM,
...) through the chat-completions API: ``POST {base_url}/chat/completions`` with ``{"model", "messages",
"temperature", "max_tokens"}``, images as ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,
..."}}`` content parts; the reply text is ``choices[0].message.content``. This client uses only the standard
library (``urllib``), retries connection errors, timeouts and 429/5xx replies with a growing pause, and raises
``JudgeUnavailable`` with the URL and the last error when every try fails. The API key, if any, comes from the
environment variable named by ``api_key_env`` (never from a file or the command line).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request

import numpy as np

from arm.data.shapeworld.render import encode_png


class JudgeUnavailable(RuntimeError):
    """The judge endpoint could not be reached, or kept failing, after every retry."""


def image_part(image: np.ndarray) -> dict:
    """A chat content part holding ``image`` (uint8 ``(H, W, 3)``) as a base64 PNG data URL."""
    data = base64.b64encode(encode_png(np.asarray(image, np.uint8))).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


class ChatClient:
    """``ChatClient(base_url, model).complete(messages) -> reply text``.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is appended).
        model: the model name the server expects.
        api_key_env: environment variable holding a bearer token; unset or empty = no Authorization header.
        timeout_s: seconds per request.
        retries: attempts after the first one.
        backoff_s: pause before retry k is ``backoff_s * k``.
    """

    RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})

    def __init__(self, base_url: str, model: str = "default", api_key_env: str = "ARM_JUDGE_API_KEY",
                 timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0, max_tokens: int = 512):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge URL {base_url!r} must start with http:// or https://")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout_s, self.retries, self.backoff_s = model, timeout_s, retries, backoff_s
        self.max_tokens = max_tokens
        self.api_key = os.environ.get(api_key_env, "")

    def complete(self, messages: list[dict]) -> str:
        """Send one chat request (temperature 0) and return the reply text."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last_error = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * attempt)
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"]
            except urllib.error.HTTPError as err:
                last_error = f"HTTP {err.code} {err.reason}"
                if err.code not in self.RETRY_STATUS:
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last_error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                last_error = f"reply is not a chat completion ({type(err).__name__}: {err})"
        raise JudgeUnavailable(f"judge at {self.url} failed after {attempt + 1} attempt(s): {last_error}; "
                               "check --judge-url and that the server is running")
