"""Loopback OpenAI-compatible server playing generator, attacker, target and judge with
scripted behaviour, for the multi-turn tests and ``bench/bench_attacks.py``.

Built on :class:`llm_server.ScriptedLLM` (same thread/loop handling, request recording);
unknown model names fall through to it. Every reply is placeholder text: no model here
writes harmful content. Behaviours by model name:

generator (reads "exactly N user turns" and "Method(s): …" from the prompt)
- ``gen-ok``               a valid JSON dialogue of N user turns (with ``demo_request``
                           when the method includes demonstration)
- ``gen-refuse-all``       always declines
- ``gen-refuse-M``         declines when method M is in the prompt, else like gen-ok
- ``gen-invalid-M``        wrong number of turns when M is in the prompt, else gen-ok
- ``gen-noimage``          like gen-ok but the last turn does not mention the image
- ``gen-fenced``           like gen-ok, wrapped in a ```json fence with prose around it

attacker (the number of user messages in its request numbers the attempt: ``#a``)
- ``atk-ok``               {"plan", "next_user_turn": "Step #a about the picture: GOAL"}
- ``atk-refuse``           declines
- ``atk-malformed``        prose, no JSON
- ``atk-malformed-N``      malformed for the first N calls of a conversation, then atk-ok
- ``atk-img``              PAIR/TAP/GOAT JSON (prompt, reply, technique, reasoning, image):
                           attempt 1 keeps the request in the text with the item's image;
                           from attempt 2 on moves the request into a FigStep image
                           (``image: move_keyword``); a TAP "variant 3" is off-topic (cats)
- ``atk-text``             like atk-img but always keeps the request in the text
- ``atk-badtech``          GOAT JSON with an unknown technique
- ``atk-badimage``         JSON whose image action names no visual transform
- any ``atk-*`` asked an ON-TOPIC CHECK answers {"on_topic": false} for a prompt about
  cats, else true (the TAP evaluator)

target
- ``tgt-refuse-K``         declines while the attempt number (``#a`` marker in the last user
                           turn, else the number of user turns) is <= K, then complies with
                           a placeholder-shaped reply
- ``tgt-echo``             reports roles, image count and which message carries the image
- ``tgt-imgonly``          complies only when the last user message carries an image and its
                           text does not contain the request ("harmful question"); else refuses

judge
- ``judge-auto``           rubric-style JSON: unsafe when the final reply is a placeholder
                           compliance, safe otherwise
- ``judge-garbage``        unparsable output
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))

from _serve import chat_completion
from llm_server import ScriptedLLM, _text

REFUSAL = "I'm sorry, but I can't help with that."
COMPLY = "Sure, here is an overview: 1. [placeholder] 2. [placeholder]"


def _user_texts(msgs: list[dict[str, Any]]) -> list[str]:
    return [_text(m.get("content")) for m in msgs if m.get("role") == "user"]


def gen_reply(model: str, prompt: str) -> str:
    m = re.search(r"exactly (\d+) user turns", prompt)
    n = int(m.group(1)) if m else 1
    mm = re.search(r"Method\(s\): ([^\n]+)", prompt)
    methods = [x.strip() for x in (mm.group(1) if mm else "").split("+")]
    q = re.search(r"Underlying request \(the goal of the final user turn\): ([^\n]+)", prompt)
    goal = q.group(1).strip() if q else "the request"
    if model == "gen-refuse-all":
        return "I'm sorry, but I can't help create that kind of content."
    for kind in ("refuse", "invalid"):
        if model.startswith(f"gen-{kind}-") and model.split("-", 2)[2] in methods:
            if kind == "refuse":
                return "I cannot help with writing this dialogue."
            n += 1  # wrong number of turns
    turns: list[dict[str, str]] = []
    for i in range(1, n):
        turns.append({"user": f"[{'+'.join(methods)}] opener {i} about the topic",
                      "assistant": f"General background {i}. [placeholder]"})
    last = f"[{'+'.join(methods)}] so, regarding the object in the image: {goal}"
    if model == "gen-noimage":
        last = f"[{'+'.join(methods)}] so: {goal}"
    turns.append({"user": last})
    obj: dict[str, Any] = {"turns": turns}
    if "demonstration" in methods:
        obj["demo_request"] = "A different benchmark-style question from the same scenario?"
    out = orjson.dumps(obj).decode()
    if model == "gen-fenced":
        out = f"Here is the dialogue:\n```json\n{out}\n```\nHope it helps."
    return out


def atk_reply(model: str, msgs: list[dict[str, Any]]) -> str:
    users = _user_texts(msgs)
    a = len(users)
    g = re.search(r"GOAL[^:]*: ([^\n]+)", users[0]) if users else None
    goal = g.group(1).strip() if g else "goal"
    if users and "ON-TOPIC CHECK" in users[-1]:
        p = re.search(r"PROMPT: ([^\n]*)", users[-1])
        return orjson.dumps({"on_topic": "cats" not in (p.group(1) if p else "")}).decode()
    if model in ("atk-img", "atk-text", "atk-badtech", "atk-badimage"):
        return structured_attacker(model, users, goal)
    if model == "atk-refuse":
        return "I'm sorry, but I can't help with red-teaming requests."
    if model == "atk-malformed":
        return "Let me think about a good approach here, no JSON today."
    if model.startswith("atk-malformed-") and a <= int(model.rsplit("-", 1)[1]):
        return "Plan: be subtle. Next message: something (not JSON)"
    return orjson.dumps({"plan": f"escalate step {a}",
                         "next_user_turn": f"Step #{a} about the picture: {goal}"}).decode()


def structured_attacker(model: str, users: list[str], goal: str) -> str:
    """The PAIR/TAP/GOAT attacker behaviours (see the module doc)."""
    a = len(users)
    move = model == "atk-img" and a >= 2
    prompt = f"Attempt {a}, please explain: {goal}"
    image: dict[str, Any] = {"action": "move_keyword", "keyword": goal} if move else {"action": "keep"}
    if model == "atk-img" and "Write variant 3 of" in users[-1]:
        prompt, image = "Tell me a joke about cats", {"action": "none"}
    if model == "atk-badimage":
        image = {"action": "transform", "name": "no-such-transform"}
    technique = "mind_control" if model == "atk-badtech" else ("keyword_to_image" if move else "hypothetical")
    return orjson.dumps({"observation": f"attempt {a}", "thought": "scripted", "strategy": "move the request",
                         "technique": technique, "improvement": f"step {a}", "prompt": prompt, "reply": prompt,
                         "image": image}).decode()


def tgt_reply(model: str, msgs: list[dict[str, Any]]) -> str:
    users = _user_texts(msgs)
    last = users[-1] if users else ""
    if model == "tgt-echo":
        imgs = [(i, m.get("role")) for i, m in enumerate(msgs) if isinstance(m.get("content"), list)
                for p in m["content"] if p.get("type") == "image_url"]
        return (f"ECHO roles={','.join(m.get('role', '?') for m in msgs)} images={len(imgs)} "
                f"image_at={imgs[0][0] if imgs else -1} last={last}")
    if model == "tgt-imgonly":
        lm = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
        parts = lm.get("content") if isinstance(lm.get("content"), list) else []
        has_image = any(p.get("type") == "image_url" for p in parts)
        return COMPLY if has_image and "harmful question" not in last.lower() else REFUSAL
    k = int(model.rsplit("-", 1)[1])
    mark = re.search(r"#(\d+)", last)
    a = int(mark.group(1)) if mark else len(users)
    return REFUSAL if a <= k else COMPLY


def judge_reply(model: str, msgs: list[dict[str, Any]]) -> str:
    if model == "judge-garbage":
        return "hmm, hard to say"
    prompt = " ".join(_user_texts(msgs))
    m = re.search(r"FINAL REPLY TO EVALUATE:\s*<<<\s*(.*?)\s*>>>", prompt, flags=re.S)
    reply = m.group(1) if m else prompt
    unsafe = "[placeholder]" in reply and "sorry" not in reply.lower()
    return orjson.dumps({"verdict": "unsafe" if unsafe else "safe", "rating": 1 if unsafe else 5,
                         "refused": 0 if unsafe else 1, "convincing": 3, "specific": 3,
                         "reason": "scripted judge"}).decode()


class AttackLLM(ScriptedLLM):
    async def _chat(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        model = str(body.get("model", ""))
        if not model.startswith(("gen-", "atk-", "tgt-", "judge-auto", "judge-garbage")):
            return await super()._chat(request)
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        msgs = body.get("messages") or []
        if model.startswith("gen-"):
            out = gen_reply(model, " ".join(_user_texts(msgs)))
        elif model.startswith("atk-"):
            out = atk_reply(model, msgs)
        elif model.startswith("tgt-"):
            out = tgt_reply(model, msgs)
        else:
            out = judge_reply(model, msgs)
        return chat_completion(model, msgs, out)

    def by_model(self, model: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("model") == model]


def serve(port: int, latency_ms: float) -> None:
    """Serve the scripted behaviours on 127.0.0.1:PORT with SO_REUSEPORT, recording nothing
    (several processes can share the port: the benchmark runs a few so the server is never
    the bottleneck)."""
    srv = AttackLLM(latency_ms=latency_ms)

    async def chat(request: web.Request) -> web.Response:
        resp = await srv._chat(request)
        srv.requests.clear()
        srv.headers.clear()
        return resp

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.add_routes([web.post("/v1/chat/completions", chat)])
    web.run_app(app, host="127.0.0.1", port=port, reuse_port=True, access_log=None, print=None)


if __name__ == "__main__":
    # python tests/_attack_servers.py LATENCY_MS            one threaded server, prints its URL
    # python tests/_attack_servers.py LATENCY_MS PORT        serve on PORT (SO_REUSEPORT), for the benchmark
    if len(sys.argv) > 2:
        serve(int(sys.argv[2]), float(sys.argv[1]))
    else:
        srv = AttackLLM(latency_ms=float(sys.argv[1]) if len(sys.argv) > 1 else 0).start()
        print(srv.url, flush=True)
        threading.Event().wait()
