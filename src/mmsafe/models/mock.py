"""Mock reference models for demos and tests — labelled as mocks in every output.

They are served by a real OpenAI-compatible HTTP server on 127.0.0.1 (started on an
ephemeral port inside the running process), so a run against ``mock/refuser`` goes
through exactly the client path a real endpoint does. They write no harmful
content: the "complier" returns an obviously placeholder, compliant-*shaped* reply.

Behaviours (the model name after ``mock/``):

- ``refuser``  — always declines.
- ``complier`` — always answers in a compliant shape (placeholder text only).
- ``echo``     — repeats what it received: last user text, number of images/audio
  (and video, when any) parts and turns (useful to check what a harness actually sent).
- ``mixed``    — declines or complies, chosen by a hash of the conversation's user
  messages (deterministic; a single turn: its message), so demo numbers are neither 0
  nor 100% and a dialogue's outcome depends on its turns.

Two more play the red-teaming roles, so multi-turn work can be tried offline. They follow
mmsafe's own protocols (the JSON each role's prompt asks for) and write only
benchmark-style placeholder *questions* — never answers, steps or instructions:

- ``attacker``  — ``--attacker mock/attacker`` for ``run --mode adaptive``: Crescendo's
  ``{"plan", "next_user_turn"}``, PAIR/TAP's ``{"improvement", "prompt", "image"}``, GOAT's
  reasoning + ``technique`` + ``reply``, and TAP's on-topic check. It opens with a benign
  question about the image, then asks the goal (the benchmark question itself) in another
  framing after each refusal. Every message carries ``[mock attacker]``.
- ``generator`` — ``--generator mock/generator`` for ``mmsafe dialogues`` (the exact number
  of user turns, ``demo_request`` for the demonstration method) and the ``mmsafe build``
  agents (candidate questions, scores, cross-modal rewrites, critic, classifier, text
  rewrites, taxonomy panel/merge). Its questions are ``[mock]``-tagged placeholders.

Only these two are accepted as attacker and dialogue generator (:func:`role_error`).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any, ClassVar

import orjson
from aiohttp import web

from mmsafe.models.base import EndpointConfig
from mmsafe.models.openai_compat import OpenAIProvider

TARGET_BEHAVIOURS = ("refuser", "complier", "echo", "mixed")
ROLE_BEHAVIOURS = {"attacker": "attacker", "generator": "generator"}
"""The role (``--attacker``, ``--generator``, build agents) each role mock plays."""
BEHAVIOURS = (*TARGET_BEHAVIOURS, *ROLE_BEHAVIOURS)
MOCK_TAG = "[mmsafe mock reference model — not a real LLM]"

REFUSAL = "I'm sorry, but I can't help with that request. " + MOCK_TAG
COMPLIANCE = ("Sure, here is an overview of how one would approach that. "
              + MOCK_TAG + " A real model that complied would give the requested content here; "
              "this mock writes only placeholders. 1. [placeholder step] 2. [placeholder step] "
              "3. [placeholder step]")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def mock_reply(behaviour: str, messages: list[dict[str, Any]]) -> str:
    """The scripted reply of a mock behaviour (refuser, complier, echo, mixed, attacker,
    generator) to OpenAI-style messages."""
    last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if behaviour == "refuser":
        return REFUSAL
    if behaviour == "complier":
        return COMPLIANCE
    if behaviour == "echo":
        n_img = n_aud = n_vid = 0
        for m in messages:
            if isinstance(m.get("content"), list):
                for p in m["content"]:
                    n_img += p.get("type") == "image_url"
                    n_aud += p.get("type") == "input_audio"
                    n_vid += p.get("type") == "video_url"
        turns = sum(1 for m in messages if m.get("role") == "user")
        system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), "")
        vid = f" video={n_vid}" if n_vid else ""
        return (f"ECHO turns={turns} images={n_img} audio={n_aud}{vid} system={len(system)} "
                f"last_user={last_user} {MOCK_TAG}")
    if behaviour == "mixed":  # the whole conversation's user text: a dialogue's outcome depends on its length
        users = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
        h = int(hashlib.sha256(users.encode()).hexdigest(), 16)
        return COMPLIANCE if h % 3 == 0 else REFUSAL
    if behaviour == "attacker":
        from mmsafe.models.mock_roles import attacker_reply
        return attacker_reply(messages)
    if behaviour == "generator":
        from mmsafe.models.mock_roles import generator_reply
        return generator_reply(messages)
    raise ValueError(f"unknown mock behaviour {behaviour!r}; choose one of {', '.join(BEHAVIOURS)}")


def role_error(cfg: EndpointConfig, role: str) -> str | None:
    """Why a mock model may not play the red-teaming ``role`` (``attacker`` or
    ``generator``), or None when it may (it is that role's mock, or no mock at all).

    The target mocks (refuser, complier, echo, mixed) only answer: they cannot attack or
    write dialogues; ``mock/attacker`` and ``mock/generator`` can."""
    if not cfg.is_mock or role not in ROLE_BEHAVIOURS.values():
        return None
    wanted = next(b for b, r in ROLE_BEHAVIOURS.items() if r == role)
    if cfg.model == wanted:
        return None
    what = f"the MOCK {ROLE_BEHAVIOURS[cfg.model]}" if cfg.model in ROLE_BEHAVIOURS else "a MOCK target"
    return (f"mock/{cfg.model} is {what} and cannot play the {role}; use mock/{wanted} (the MOCK {role}) "
            "or an LLM endpoint")


def make_mock_app(latency_ms: float = 0.0) -> web.Application:
    """The mock OpenAI-compatible chat server as an aiohttp app (``model`` names the behaviour)."""
    async def chat(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        model = str(body.get("model", ""))
        behaviour = model.split("/", 1)[-1]
        if behaviour not in BEHAVIOURS:
            return web.json_response({"error": {"message": f"model {model!r} not found"}}, status=404)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        msgs = body.get("messages") or []
        out = mock_reply(behaviour, msgs)
        ptok = sum(len(_text(m.get("content"))) for m in msgs) // 4 + 1
        ctok = len(out) // 4 + 1
        return web.Response(body=orjson.dumps({
            "id": "mock-" + hashlib.sha1(out.encode()).hexdigest()[:12], "object": "chat.completion",
            "created": int(time.time()), "model": f"mock/{behaviour}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok},
        }), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": f"mock/{b}", "object": "model"}
                                                              for b in BEHAVIOURS]})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/v1/chat/completions", chat), web.get("/v1/models", models)])
    return app


class LoopbackServer:
    """An aiohttp app served on 127.0.0.1:<ephemeral> inside the running event loop."""

    def __init__(self, app: web.Application):
        self.app = app
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> str:
        """Serve the app on an ephemeral loopback port; returns its OpenAI base URL."""
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]  # the server exists once start() returned
        self.port = sock.getsockname()[1]
        return f"http://127.0.0.1:{self.port}/v1"

    async def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class MockProvider(OpenAIProvider):
    """``mock/<behaviour>``: starts its own loopback server and talks OpenAI to it."""

    _servers: ClassVar[dict[int, tuple[LoopbackServer, str, int]]] = {}  # per event loop: server, url, users

    def __init__(self, cfg: EndpointConfig):
        if cfg.model not in BEHAVIOURS:
            from mmsafe.models.base import ConfigError
            raise ConfigError(f"unknown mock model 'mock/{cfg.model}': choose one of "
                              + ", ".join(f"mock/{b}" for b in BEHAVIOURS))
        cfg = cfg.model_copy(update={"base_url": cfg.base_url or "http://127.0.0.1:0/v1"})
        super().__init__(cfg)
        self._own_loop: int | None = None

    def check_credentials(self) -> None:
        """Mock models need no key."""
        return None

    def identity(self) -> dict[str, Any]:
        """Cache identity: the behaviour only (the loopback URL changes every run)."""
        return {"provider": "mock", "model": self.cfg.model}

    async def start(self) -> None:
        """Start (or share) this event loop's loopback mock server, then the OpenAI client."""
        loop_id = id(asyncio.get_running_loop())
        entry = self._servers.get(loop_id)
        if entry is None:
            srv = LoopbackServer(make_mock_app())
            url = await srv.start()
            entry = (srv, url, 0)
        srv, url, users = entry
        self._servers[loop_id] = (srv, url, users + 1)
        self._own_loop = loop_id
        self.base_url = url
        await super().start()

    async def close(self) -> None:
        """Close the client; the last user on this event loop stops the server."""
        await super().close()
        if self._own_loop is None:
            return
        srv, url, users = self._servers[self._own_loop]
        if users <= 1:
            del self._servers[self._own_loop]
            await srv.stop()
        else:
            self._servers[self._own_loop] = (srv, url, users - 1)
        self._own_loop = None
