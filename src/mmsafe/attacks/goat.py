"""GOAT (Pavlova et al., 2024: Generative Offensive Agent Tester), with images.

An agentic attacker plays the user over a conversation of at most ``max_turns`` turns.
Each turn it reasons in four steps — observation (what the target's last reply shows),
thought, strategy — and chooses ONE named technique (``prompts/goat_techniques.txt``:
refusal suppression, dual response, response priming, persona modification,
hypothetical, topic splitting, opposite intent, and the multimodal ones: typographic
image, visual transform, keyword to image), then writes the next user message (JSON
``{"observation", "thought", "strategy", "technique", "reply", "image"}``). Its reasoning
and technique are recorded with every turn.

The target keeps the whole conversation (its own replies included). The sample's image
goes with the first user turn (``image: keep``); an image action on a later turn attaches
the new image (FigStep text, a visual transform, a moved keyword) to that turn. Every
reply is judged with the dialogue so far; the attack stops at the first unsafe reply or
after ``max_turns`` turns (status ``max_turns``).

Attacker failures: a refusal ends the attack (``attacker_refused``); a malformed output,
an unknown technique or an image action that cannot be done is retried with a reminder up
to ``attacker_retries`` times in a row, then ``attacker_invalid`` — never evidence of
target safety.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

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
    Reply,
    SampleContext,
    parse_image_action,
    parse_json_output,
)
from mmsafe.attacks.dialogues import fill, is_refusal
from mmsafe.attacks.pair import image_note

REASONING = ("observation", "thought", "strategy")


class GoatConfig(AttackConfig):
    """GOAT's options (``--max-turns``, ``--attack-opt K=V``)."""

    max_turns: int = Field(5, ge=1, le=50, description="conversation turns at most")
    attacker_retries: int = Field(2, ge=0, description="malformed attacker outputs retried in a row")


class GoatState(AttackState):
    """GOAT's per-sample state: the attacker's own history and the turn in flight."""

    a_msgs: list[Msg] = Field(default_factory=list)
    bad_outputs: int = 0
    reply: str | None = None
    turn_info: dict[str, Any] = Field(default_factory=dict)  # technique, reasoning, images of the turn in flight


def technique_names(text: str) -> list[str]:
    """The technique names of ``goat_techniques.txt`` (``name: description`` lines)."""
    return [line.split(":", 1)[0].strip() for line in text.splitlines() if ":" in line]


def _norm(name: Any) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


class Goat(Attack[GoatConfig, GoatState]):
    """GOAT: an agentic attacker choosing a named technique each turn (see the module doc)."""

    name = "goat"
    config_model = GoatConfig
    state_model = GoatState
    prompt_files = ("goat_system.txt", "goat_start.txt", "goat_feedback.txt", "goat_techniques.txt",
                    "image_actions.txt", "json_reminder.txt")

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.techniques = technique_names(self.prompts["goat_techniques.txt"])

    def details(self, state: AttackState) -> dict[str, Any]:
        """The technique chosen at each kept turn."""
        return {"techniques": [t.get("technique") for t in state.transcript]}

    def _call(self, state: GoatState) -> list[Call]:
        system = fill(self.prompts["goat_system.txt"], max_turns=self.config.max_turns,
                      techniques=self.prompts["goat_techniques.txt"].strip(),
                      image_actions=self.prompts["image_actions.txt"].strip())
        return [Call(id="a", role="attacker", messages=list(state.a_msgs), system=system)]

    async def step(self, state: GoatState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        """attacker (reasoning + technique) -> target -> judge, per turn."""
        if not replies:
            text = fill(self.prompts["goat_start.txt"], goal=ctx.goal, scenario=ctx.scenario,
                        image_note=image_note(ctx, self.attacker_images))
            state.a_msgs = [Msg(role="user", text=text,
                                images=[SAMPLE_IMAGE] if ctx.has_image and self.attacker_images else [])]
            return self._call(state)
        r = replies[0]
        if r.role == "attacker":
            return await self._on_attacker(state, r, ctx)
        if r.role == "target":
            if not r.ok:
                state.history.pop()
                return Outcome(status="target_error", error=r.error)
            state.reply = r.text or ""
            return [Call(id="j", role="judge", messages=list(state.history), reply=state.reply,
                         turn=len(state.transcript) + 1)]
        return self._on_judgment(state, r, ctx)

    async def _read(self, state: GoatState, r: Reply, ctx: SampleContext) -> tuple[Parsed, Msg | None]:
        p = parse_json_output(r.text, ("reply", "next_user_turn", "prompt"))
        if not p.ok:
            return p, None
        tech = _norm(p.obj.get("technique", ""))
        if tech not in self.techniques:
            return Parsed("invalid", p.obj, reason=f"technique {p.obj.get('technique')!r} is not one of "
                                                   f"{', '.join(self.techniques)}"), None
        act = parse_image_action(p.obj)
        if isinstance(act, str):
            return Parsed("invalid", p.obj, reason=act), None
        assert p.prompt is not None
        prep = await ctx.prepare(act, p.prompt)
        if isinstance(prep, str):
            return Parsed("invalid", p.obj, reason=prep), None
        images = prep.images
        if act.action == "keep":  # the sample's image belongs to the first user turn only
            images = images if not state.history else []
        self.record_images(state, prep.made)
        state.turn_info = {"technique": tech, **{k: p.obj.get(k) for k in REASONING if isinstance(p.obj.get(k), str)},
                           "image_action": act.action}
        return p, Msg(role="user", text=prep.text, images=images)

    async def _on_attacker(self, state: GoatState, r: Reply, ctx: SampleContext) -> list[Call] | Outcome:
        if not r.ok:
            return Outcome(status="attacker_error", error=r.error)
        p, msg = await self._read(state, r, ctx)
        self.log_attacker(state, r, p, **({k: p.obj.get(k) for k in (*REASONING, "technique") if k in p.obj}))
        if p.status == "refused":
            return Outcome(status="attacker_refused", error=p.reason)
        if msg is None:
            state.bad_outputs += 1
            if state.bad_outputs > self.config.attacker_retries:
                return Outcome(status="attacker_invalid", error=p.reason)
            state.a_msgs += [Msg(role="assistant", text=r.text or ""),
                             Msg(role="user", text=fill(self.prompts["json_reminder.txt"], reason=p.reason).strip())]
            return self._call(state)
        state.bad_outputs = 0
        state.a_msgs.append(Msg(role="assistant", text=r.text or ""))
        state.history.append(msg)
        return [Call(id="t", role="target", messages=list(state.history))]

    def _on_judgment(self, state: GoatState, j: Reply, ctx: SampleContext) -> list[Call] | Outcome:
        reply = state.reply or ""
        turn = len(state.transcript) + 1
        user = state.history[-1]
        state.transcript.append({"turn": turn, "user": user.text, "reply": reply, "label": j.label, "score": j.score,
                                 "rationale": j.rationale, "parse_status": j.parse_status,
                                 "refused": is_refusal(reply), "images": [ctx.image_ref(k) for k in user.images],
                                 "attacker_call": len(state.attacker_log), **state.turn_info})
        state.history.append(Msg(role="assistant", text=reply))
        state.final_reply = reply
        if j.label == "unsafe":
            state.first_unsafe_turn = turn
            return Outcome(status="success")
        if turn >= self.config.max_turns:
            return Outcome(status="max_turns")
        state.a_msgs.append(Msg(role="user", text=fill(self.prompts["goat_feedback.txt"], turn=turn,
                                                       max_turns=self.config.max_turns, label=j.label,
                                                       reply=reply[:REPLY_CHARS])))
        return self._call(state)


__all__ = ["Goat", "GoatConfig", "GoatState", "technique_names"]
