"""What stands between the network and the app: request size limits, payload shape, login throttling,
and no gallery copy served once its output file is gone.

It is ASGI middleware given to Gradio's FastAPI app at launch (``server.launch``), so it sees every
route: Gradio's own, the queue, uploads and file downloads.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

MAX_BODY_BYTES = 2 << 20  # a request's JSON: controls and two prompts of MAX_PROMPT_CHARS fit many times over
MAX_UPLOAD_BYTES = 64 << 20  # an uploaded image or preset file (presets are refused over 1 MiB when parsed)
FREE_LOGIN_FAILURES = 5  # failures before the wait starts
MAX_LOGIN_WAIT_S = 300


@dataclass
class LoginThrottle:
    """Failed logins per client: after FREE_LOGIN_FAILURES, each failure doubles the wait before the
    next attempt (1 s, 2 s, 4 s ... up to MAX_LOGIN_WAIT_S); an attempt during the wait is refused
    unchecked. A success clears the client's record."""

    clock: Callable[[], float] = time.monotonic
    failures: dict = field(default_factory=dict)  # client → (count, time of the last failure)

    def wait_s(self, client: str) -> float:
        count, last = self.failures.get(client, (0, 0.0))
        if count < FREE_LOGIN_FAILURES:
            return 0.0
        wait = min(2.0 ** (count - FREE_LOGIN_FAILURES), MAX_LOGIN_WAIT_S)
        return max(0.0, last + wait - self.clock())

    def record(self, client: str, ok: bool) -> None:
        if ok:
            self.failures.pop(client, None)
        else:
            count, _ = self.failures.get(client, (0, 0.0))
            self.failures[client] = (count + 1, self.clock())


class _TooLarge(Exception):
    pass


class Guard:
    """The ASGI middleware. ``blocks`` is the Gradio app (its endpoints' input counts); ``gone(name)``
    says whether a file Gradio serves is a gallery copy whose output file was deleted."""

    def __init__(self, app, blocks=None, gone=None, throttle: LoginThrottle | None = None):
        self.app = app
        self.blocks = blocks
        self.gone = gone or (lambda name: False)
        self.throttle = throttle or LoginThrottle()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if method == "GET" and "/file=" in path:
            name = Path(unquote(path.split("/file=", 1)[1])).name
            if self.gone(name):
                return await _reply(send, 404, f"{name} was deleted from the output folder")
            return await self.app(scope, receive, send)
        if method != "POST":
            return await self.app(scope, receive, send)
        limit = MAX_UPLOAD_BYTES if path.rstrip("/").endswith("/upload") else MAX_BODY_BYTES
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _reply(send, 413, f"the request is {declared} bytes; the most is {limit}")
        if path.rstrip("/").endswith("/login"):
            return await self._login(scope, receive, send, limit)
        if limit == MAX_UPLOAD_BYTES:
            return await self.app(scope, _bounded(receive, limit), send)
        try:
            body = await _read_body(receive, limit)
        except _TooLarge:
            return await _reply(send, 413, f"the request is over {limit} bytes")
        problem = self._shape_problem(path, body)
        if problem:
            return await _reply(send, 422, problem)
        return await self.app(scope, _replay(body), send)

    async def _login(self, scope, receive, send, limit):
        client = (scope.get("client") or ("?", 0))[0]
        wait = self.throttle.wait_s(client)
        if wait > 0:
            return await _reply(send, 429, f"too many failed logins: wait {math.ceil(wait)} s before the next try",
                                headers=[(b"retry-after", str(math.ceil(wait)).encode())])
        status = {}

        async def watch(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        await self.app(scope, _bounded(receive, limit), watch)
        if status.get("code") in (200, 400, 401, 403):
            self.throttle.record(client, status["code"] == 200)

    def _shape_problem(self, path: str, body: bytes) -> str | None:
        """A clear message when a queued call has the wrong number of values (Gradio answers with none)."""
        if self.blocks is None or not (path.endswith("/queue/join") or "/call/" in path):
            return None
        try:
            payload = json.loads(body)
        except ValueError:
            return "the request body is not JSON"
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            return "the request body must be a JSON object with a list `data`"
        fn = _endpoint(self.blocks, path, payload)
        if fn is None:
            return None  # Gradio says the endpoint does not exist
        controls = [c for c in fn.inputs if type(c).__name__ != "State"]
        name = fn.api_name or fn.name
        values = payload["data"]
        if len(values) not in (len(controls), len(fn.inputs)):
            return f"{name} takes {len(controls)} values, got {len(values)}"
        components = controls if len(values) == len(controls) else fn.inputs
        for component, value in zip(components, values):
            problem = _value_problem(component, value)
            if problem:
                return f"{name}: {getattr(component, 'label', None) or type(component).__name__} {problem}"
        return None


# What each kind of control accepts as JSON, and whether it may be null (Gradio's own checks fail
# with no message on these).
_KINDS = {"Number": ("number", True), "Slider": ("number", False), "Textbox": ("text", True),
          "Radio": ("text", True), "Dropdown": ("text", True), "Checkbox": ("bool", False),
          "CheckboxGroup": ("texts", True)}


def _value_problem(component, value) -> str | None:
    kind, nullable = _KINDS.get(type(component).__name__, (None, True))
    if kind == "texts" or (kind == "text" and getattr(component, "multiselect", False)):
        # A multi-select list (styles): a list of texts.
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of texts, got {_shown(value)}"
        return None
    if kind is None:
        return None
    if value is None:  # "no value": the request model says whether the setting must have one
        return None if nullable else "must have a value, got null"
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {_shown(value)}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
    elif kind == "text" and not isinstance(value, str):
        return f"must be text, got {_shown(value)}"
    elif kind == "bool" and not isinstance(value, bool):
        return f"must be true or false, got {_shown(value)}"
    return None


def _shown(value) -> str:
    text = json.dumps(value, allow_nan=True)
    return text if len(text) <= 40 else text[:37] + "..."


def _endpoint(blocks, path: str, payload: dict):
    fns = list(blocks.fns.values())
    if "/call/" in path:
        api_name = path.rsplit("/call/", 1)[1].strip("/")
        return next((f for f in fns if f.api_name == api_name), None)
    index = payload.get("fn_index")
    return blocks.fns.get(index) if isinstance(index, int) else None


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _bounded(receive, limit: int):
    """``receive`` that ends the request (as a disconnect) once the body passes ``limit`` bytes."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                return {"type": "http.disconnect"}
        return message

    return wrapped


async def _reply(send, status: int, message: str, headers=()):
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
