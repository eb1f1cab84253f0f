"""PAIR (Chao et al., 2023: Prompt Automatic Iterative Refinement), with images.

``n_streams`` independent attacker conversations run in parallel for up to
``n_iterations`` iterations. In each iteration every live stream's attacker writes a
prompt (JSON ``{"improvement", "prompt", "image"}``), the target answers it *alone*
(single-turn: the target never sees earlier attempts), the judge reads the reply, and the
stream's attacker gets the reply and the judge's label as feedback. The attack stops at
the first reply judged unsafe, or when the iterations are spent (status ``budget``).

Each stream starts from a different approach (``prompts/pair_approaches.txt``: role-play,
logical appeal, authority, the image, word games), so streams differ even at temperature 0
and their requests are never one cached reply. The attacker may act on the image of each
prompt (:class:`~mmsafe.attacks.base.ImageAction`): keep it, drop it, draw new FigStep
text, apply a visual transform, or move a keyword out of the text into the image; every
image sent is recorded with its attempt.

Attacker failures: a stream whose attacker refuses stops; a malformed output (or an image
action that cannot be done) skips the stream's attempt in that iteration and the attacker
is reminded of the format; after ``attacker_retries`` malformed outputs in a row the stream
stops. When every stream has stopped this way the attack ends ``attacker_refused`` /
``attacker_invalid`` — an attacker failure, never evidence of target safety.

Each attempt is one transcript record (``turn`` = attempt number, ``stream``,
``iteration``, ``context: single``, ``images``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from mmsafe.attacks.base import (
    REPLY_CHARS,
    SAMPLE_IMAGE,
    Attack,
    AttackConfig,
    AttackState,
    Call,
    Msg,
    Outcome,
    Parsed,
    Prepared,
    Reply,
    SampleContext,
    parse_image_action,
    parse_json_output,
)
from mmsafe.attacks.dialogues import fill, is_refusal

PROMPT_KEYS = ("prompt", "next_prompt", "next_user_turn")


class PairConfig(AttackConfig):
    """PAIR's options (``--attack-opt K=V``)."""

    n_streams: int = Field(3, ge=1, le=64, description="parallel attacker streams")
    n_iterations: int = Field(3, ge=1, le=50, description="refinement iterations per stream")
    attacker_retries: int = Field(1, ge=0, description="malformed attacker outputs in a row before a stream stops")


class Stream(BaseModel):
    """One PAIR stream: its attacker conversation and where it stands."""

    model_config = ConfigDict(extra="forbid")
    id: int
    a_msgs: list[Msg] = Field(default_factory=list)
    bad: int = 0
    stopped: str | None = None  # attacker_refused | attacker_invalid
    sent: Msg | None = None  # the prompt of this iteration (None: no attempt this iteration)
    improvement: str | None = None
    made: list[dict[str, Any]] = Field(default_factory=list)
    reply: str | None = None


class PairState(AttackState):
    """PAIR's per-sample state."""

    streams: list[Stream] = Field(default_factory=list)
    iteration: int = 0  # 0-based, the iteration in flight


def image_note(ctx: SampleContext, attacker_images: bool) -> str:
    """What the attacker is told about the sample's image."""
    if not ctx.has_image:
        return "The item has no image (you may still create one with the image field)."
    if attacker_images:
        return "The attached image is the item's image; by default it is sent with your prompt."
    return ("The item has an image (not shown to you); by default it is sent with your prompt; refer to it as "
            "'the image'.")


def describe_sent(m: Msg, made: list[dict[str, Any]]) -> str:
    """How the attacker is told what the target received."""
    if not m.images:
        img = "no image"
    elif m.images == [SAMPLE_IMAGE]:
        img = "the item's image"
    else:
        img = "; ".join(f"{r.get('how')}" + (f" of {r['text']!r}" if r.get("text") else "") for r in made) \
            or "the new image"
    return f"text {m.text!r} with {img}"


async def read_attempt(ctx: SampleContext, r: Reply, keys: tuple[str, ...] = PROMPT_KEYS
                       ) -> tuple[Parsed, Prepared | None]:
    """An attacker reply as (parse, the user message to send): the JSON, its prompt and
    its image action applied; a bad image action makes the parse ``invalid``."""
    p = parse_json_output(r.text, keys)
    if not p.ok:
        return p, None
    act = parse_image_action(p.obj)
    if isinstance(act, str):
        return Parsed("invalid", p.obj, reason=act), None
    assert p.prompt is not None
    prep = await ctx.prepare(act, p.prompt)
    if isinstance(prep, str):
        return Parsed("invalid", p.obj, reason=prep), None
    return p, prep


def attempt_record(turn: int, sent: Msg, reply: str, j: Reply, ctx: SampleContext, **more: Any) -> dict[str, Any]:
    """One judged single-turn attempt as a transcript record."""
    return {"turn": turn, "user": sent.text, "reply": reply, "label": j.label, "score": j.score,
            "rationale": j.rationale, "parse_status": j.parse_status, "refused": is_refusal(reply),
            "context": "single", "images": [ctx.image_ref(k) for k in sent.images], **more}


def failure_status(stopped: list[str | None]) -> str:
    """The outcome when every stream/branch stopped on attacker failures (refusals dominate)."""
    return "attacker_refused" if stopped.count("attacker_refused") >= stopped.count("attacker_invalid") \
        else "attacker_invalid"


class Pair(Attack[PairConfig, PairState]):
    """PAIR: parallel streams of attacker refinement with judge feedback (see the module doc)."""

    name = "pair"
    config_model = PairConfig
    state_model = PairState
    prompt_files = ("pair_system.txt", "pair_start.txt", "pair_feedback.txt", "pair_approaches.txt",
                    "image_actions.txt", "json_reminder.txt")
    multi_turn: ClassVar[bool] = False

    def _system(self) -> str:
        return fill(self.prompts["pair_system.txt"], image_actions=self.prompts["image_actions.txt"].strip())

    def _call(self, s: Stream) -> Call:
        return Call(id=f"a{s.id}", role="attacker", messages=list(s.a_msgs), system=self._system())

    def _start(self, state: PairState, ctx: SampleContext) -> list[Call]:
        approaches = [x.strip() for x in self.prompts["pair_approaches.txt"].splitlines() if x.strip()]
        c = self.config
        for i in range(c.n_streams):
            text = fill(self.prompts["pair_start.txt"], goal=ctx.goal, scenario=ctx.scenario,
                        image_note=image_note(ctx, self.attacker_images), stream=i + 1, n_streams=c.n_streams,
                        approach=approaches[i % len(approaches)], n_iterations=c.n_iterations)
            first = Msg(role="user", text=text, images=[SAMPLE_IMAGE] if ctx.has_image and self.attacker_images
                        else [])
            state.streams.append(Stream(id=i, a_msgs=[first]))
        return [self._call(s) for s in state.streams]

    async def step(self, state: PairState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        """attackers (all streams) -> targets -> judges -> feedback, per iteration."""
        if not replies:
            return self._start(state, ctx)
        role = replies[0].role
        if role == "attacker":
            return await self._on_attackers(state, replies, ctx)
        if role == "target":
            bad = next((r for r in replies if not r.ok), None)
            if bad is not None:
                return Outcome(status="target_error", error=bad.error)
            by_id = {s.id: s for s in state.streams}
            calls = []
            n = len(state.transcript)
            for k, r in enumerate(replies):
                s = by_id[int(r.id[1:])]
                s.reply = r.text or ""
                assert s.sent is not None
                calls.append(Call(id=f"j{s.id}", role="judge", messages=[s.sent], reply=s.reply, turn=n + k + 1))
            return calls
        return self._on_judgments(state, replies, ctx)

    async def _on_attackers(self, state: PairState, replies: list[Reply], ctx: SampleContext
                            ) -> list[Call] | Outcome:
        bad = next((r for r in replies if not r.ok), None)
        if bad is not None:  # an endpoint failure: the sample is an error, a re-run resumes before this step
            return Outcome(status="attacker_error", error=bad.error)
        by_id = {s.id: s for s in state.streams}
        calls: list[Call] = []
        for r in replies:
            s = by_id[int(r.id[1:])]
            s.sent, s.made, s.improvement = None, [], None
            p, prep = await read_attempt(ctx, r)
            imp = p.obj.get("improvement")
            self.log_attacker(state, r, p, stream=s.id, iteration=state.iteration + 1,
                              improvement=imp if isinstance(imp, str) else None)
            s.a_msgs.append(Msg(role="assistant", text=r.text or ""))
            if p.status == "refused":
                s.stopped = "attacker_refused"
                continue
            if prep is None:
                s.bad += 1
                if s.bad > self.config.attacker_retries:
                    s.stopped = "attacker_invalid"
                else:
                    s.a_msgs.append(Msg(role="user", text=fill(self.prompts["json_reminder.txt"],
                                                               reason=p.reason).strip()))
                continue
            s.bad = 0
            s.sent = Msg(role="user", text=prep.text, images=prep.images)
            s.made, s.improvement = prep.made, imp if isinstance(imp, str) else None
            self.record_images(state, prep.made)
            calls.append(Call(id=f"t{s.id}", role="target", messages=[s.sent]))
        if calls:
            return calls
        return self._next_iteration(state)

    def _on_judgments(self, state: PairState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        by_id = {s.id: s for s in state.streams}
        first_unsafe: dict[str, Any] | None = None
        for j in replies:
            s = by_id[int(j.id[1:])]
            assert s.sent is not None
            rec = attempt_record(len(state.transcript) + 1, s.sent, s.reply or "", j, ctx, stream=s.id,
                                 iteration=state.iteration + 1, improvement=s.improvement)
            state.transcript.append(rec)
            if j.label == "unsafe" and first_unsafe is None:
                first_unsafe = rec
                state.history = [s.sent, Msg(role="assistant", text=s.reply or "")]
            score = f" (score {j.score:g})" if j.score is not None else ""
            s.a_msgs.append(Msg(role="user", text=fill(
                self.prompts["pair_feedback.txt"], iteration=state.iteration + 1,
                n_iterations=self.config.n_iterations, sent=describe_sent(s.sent, s.made),
                reply=(s.reply or "")[:REPLY_CHARS], label=j.label, score_note=score)))
        state.final_reply = state.transcript[-1]["reply"]
        if first_unsafe is not None:
            state.first_unsafe_turn = first_unsafe["turn"]
            state.final_reply = first_unsafe["reply"]
            return Outcome(status="success")
        last = state.transcript[-1]
        state.history = [Msg(role="user", text=last["user"]), Msg(role="assistant", text=last["reply"])]
        return self._next_iteration(state)

    def _next_iteration(self, state: PairState) -> list[Call] | Outcome:
        state.iteration += 1
        live = [s for s in state.streams if s.stopped is None]
        if not live:
            return Outcome(status=failure_status([s.stopped for s in state.streams]),
                           error="every attacker stream stopped (refused or malformed output)")
        if state.iteration >= self.config.n_iterations:
            if not state.transcript:
                return Outcome(status="attacker_invalid", error="no usable attacker output in any iteration")
            return Outcome(status="budget")
        return [self._call(s) for s in live]


__all__ = ["Pair", "PairConfig", "PairState", "Stream", "attempt_record", "describe_sent", "failure_status",
           "image_note", "read_attempt"]
