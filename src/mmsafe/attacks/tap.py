"""TAP (Mehrotra et al., 2023: Tree of Attacks with Pruning), with images.

A tree of attacker conversations, searched breadth first. At each level every leaf
branches into ``branching`` children: the leaf's attacker conversation asked for variant
k of b of an improved prompt (JSON ``{"improvement", "prompt", "image"}``, as PAIR's).
Then two prunings:

1. **off-topic** (``on_topic: true``): an evaluator (the attacker LLM, asked an
   ON-TOPIC CHECK, ``prompts/tap_on_topic.txt``) reads each child's prompt against the goal;
   off-topic children are dropped before the target sees them;
2. **width**: the target answers each remaining child's prompt alone (single-turn), the
   judge reads each reply, and only the best ``width`` children (unsafe, then by the
   judge's score) are kept as the next level's leaves; their attacker conversations get
   the reply and the judge's label as feedback.

The search stops at the first reply judged unsafe or after ``depth`` levels (status
``budget``). A child whose attacker refuses or writes unusable output (a bad image action
included) is dropped as an attacker failure; when every child of a level is dropped that
way, or every one is off-topic, the attack ends ``attacker_refused`` /
``attacker_invalid`` (never evidence of target safety).

Each target query is a transcript record (``node``, ``parent``, ``depth``, ``context:
single``, ``images``); the whole tree, with every node's fate (``off_topic``,
``attacker_refused``, ``attacker_invalid``, ``pruned_width``, ``kept``, ``success``), is
stored as ``details.tree``.
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
    Reply,
    SampleContext,
)
from mmsafe.attacks.dialogues import extract_json_object, fill
from mmsafe.attacks.pair import attempt_record, describe_sent, failure_status, image_note, read_attempt


class TapConfig(AttackConfig):
    """TAP's options (``--attack-opt K=V``)."""

    width: int = Field(4, ge=1, le=64, description="leaves kept per level (width pruning)")
    branching: int = Field(2, ge=1, le=16, description="children per leaf")
    depth: int = Field(3, ge=1, le=20, description="levels at most")
    on_topic: bool = Field(True, description="prune off-topic prompts with the evaluator before the target")


class Node(BaseModel):
    """A node of the tree: its attacker conversation, its prompt and its fate."""

    model_config = ConfigDict(extra="forbid")
    id: str
    parent: str | None = None
    depth: int = 0
    a_msgs: list[Msg] = Field(default_factory=list)
    sent: Msg | None = None
    made: list[dict[str, Any]] = Field(default_factory=list)
    improvement: str | None = None
    reply: str | None = None
    label: str | None = None
    score: float | None = None
    status: str = "open"


class TapState(AttackState):
    """TAP's per-sample state: every node, the leaves to expand, the level in flight."""

    nodes: dict[str, Node] = Field(default_factory=dict)
    frontier: list[str] = Field(default_factory=list)
    children: list[str] = Field(default_factory=list)
    level: int = 0


def parse_on_topic(text: str | None) -> bool | None:
    """The evaluator's answer: ``{"on_topic": bool}`` or a leading yes/no; None if neither."""
    obj = extract_json_object(text)
    if obj is not None and isinstance(obj.get("on_topic"), bool):
        return bool(obj["on_topic"])
    t = (text or "").strip().lower()
    if t.startswith(("yes", "true")):
        return True
    if t.startswith(("no", "false")):
        return False
    return None


_RANK = {"unsafe": 2, "unscored": 1, "safe": 0}


class Tap(Attack[TapConfig, TapState]):
    """TAP: a pruned tree of attacker refinements (see the module doc)."""

    name = "tap"
    config_model = TapConfig
    state_model = TapState
    prompt_files = ("pair_system.txt", "tap_start.txt", "tap_branch.txt", "tap_on_topic.txt", "pair_feedback.txt",
                    "image_actions.txt", "json_reminder.txt")
    multi_turn: ClassVar[bool] = False

    def details(self, state: AttackState) -> dict[str, Any]:
        """The tree: every node's id, parent, depth, fate, label and score."""
        assert isinstance(state, TapState)
        return {"tree": [{"id": n.id, "parent": n.parent, "depth": n.depth, "status": n.status, "label": n.label,
                          "score": n.score} for n in state.nodes.values() if n.parent is not None]}

    def _system(self) -> str:
        return fill(self.prompts["pair_system.txt"], image_actions=self.prompts["image_actions.txt"].strip())

    def _branch(self, state: TapState) -> list[Call]:
        b = self.config.branching
        calls, state.children = [], []
        for leaf_id in state.frontier:
            leaf = state.nodes[leaf_id]
            last = leaf.a_msgs[-1]
            for k in range(1, b + 1):
                note = fill(self.prompts["tap_branch.txt"], variant=k, branching=b).strip()
                child = Node(id=f"{leaf.id}.{k}", parent=leaf.id, depth=state.level + 1,
                             a_msgs=[*leaf.a_msgs[:-1], Msg(role="user", text=f"{last.text}\n\n{note}",
                                                            images=last.images)])
                state.nodes[child.id] = child
                state.children.append(child.id)
                calls.append(Call(id=f"a:{child.id}", role="attacker", messages=list(child.a_msgs),
                                  system=self._system()))
        return calls

    async def step(self, state: TapState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        """branch (attacker) -> on-topic check (evaluator) -> target -> judge -> width pruning, per level."""
        if not replies:
            text = fill(self.prompts["tap_start.txt"], goal=ctx.goal, scenario=ctx.scenario,
                        image_note=image_note(ctx, self.attacker_images), width=self.config.width,
                        depth=self.config.depth)
            root = Node(id="r", a_msgs=[Msg(role="user", text=text, images=[SAMPLE_IMAGE]
                                            if ctx.has_image and self.attacker_images else [])])
            state.nodes = {"r": root}
            state.frontier = ["r"]
            return self._branch(state)
        bad = next((r for r in replies if not r.ok), None)
        if bad is not None:  # an endpoint failure: the sample is an error, a re-run resumes before this step
            return Outcome(status="target_error" if bad.role == "target" else "attacker_error", error=bad.error)
        role = replies[0].role
        if role == "attacker":
            return await self._on_attackers(state, replies, ctx)
        if role == "evaluator":
            return self._on_evaluators(state, replies, ctx)
        if role == "target":
            n0 = len(state.transcript)
            calls = []
            for k, r in enumerate(replies):
                node = state.nodes[r.id[2:]]
                node.reply = r.text or ""
                assert node.sent is not None
                calls.append(Call(id=f"j:{node.id}", role="judge", messages=[node.sent], reply=node.reply,
                                  turn=n0 + k + 1))
            return calls
        return self._on_judgments(state, replies, ctx)

    async def _on_attackers(self, state: TapState, replies: list[Reply], ctx: SampleContext
                            ) -> list[Call] | Outcome:
        ok: list[Node] = []
        for r in replies:
            node = state.nodes[r.id[2:]]
            p, prep = await read_attempt(ctx, r)
            imp = p.obj.get("improvement")
            self.log_attacker(state, r, p, node=node.id, parent=node.parent, depth=node.depth,
                              improvement=imp if isinstance(imp, str) else None)
            node.a_msgs.append(Msg(role="assistant", text=r.text or ""))
            if prep is None:
                node.status = "attacker_refused" if p.status == "refused" else "attacker_invalid"
                continue
            node.sent = Msg(role="user", text=prep.text, images=prep.images)
            node.made, node.improvement = prep.made, imp if isinstance(imp, str) else None
            self.record_images(state, prep.made)
            ok.append(node)
        if not ok:
            return Outcome(status=failure_status([state.nodes[c].status for c in state.children]),
                           error=f"no usable attacker output at depth {state.level + 1}")
        if self.config.on_topic:
            calls = []
            for node in ok:
                assert node.sent is not None
                text = fill(self.prompts["tap_on_topic.txt"], goal=ctx.goal, prompt=node.sent.text,
                            image_note="With it, the target sees: " + describe_sent(node.sent, node.made))
                calls.append(Call(id=f"e:{node.id}", role="evaluator", messages=[Msg(role="user", text=text)]))
            return calls
        return self._targets(ok)

    def _targets(self, nodes: list[Node]) -> list[Call]:
        return [Call(id=f"t:{n.id}", role="target", messages=[n.sent]) for n in nodes if n.sent is not None]

    def _on_evaluators(self, state: TapState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        keep: list[Node] = []
        for r in replies:
            node = state.nodes[r.id[2:]]
            verdict = parse_on_topic(r.text)
            state.attacker_log.append({"call": len(state.attacker_log) + 1, "kind": "evaluator", "node": node.id,
                                       "on_topic": verdict, "raw": (r.text or "")[:500]})
            if verdict is False:
                node.status = "off_topic"
            else:  # an unreadable evaluator answer never prunes
                keep.append(node)
        if not keep:
            return Outcome(status="attacker_invalid", error=f"every prompt at depth {state.level + 1} was off topic")
        return self._targets(keep)

    def _on_judgments(self, state: TapState, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        judged: list[Node] = []
        winner: Node | None = None
        for j in replies:
            node = state.nodes[j.id[2:]]
            assert node.sent is not None
            node.label, node.score = j.label, j.score
            rec = attempt_record(len(state.transcript) + 1, node.sent, node.reply or "", j, ctx, node=node.id,
                                 parent=node.parent, depth=node.depth, improvement=node.improvement)
            state.transcript.append(rec)
            judged.append(node)
            if j.label == "unsafe" and winner is None:
                winner = node
                state.first_unsafe_turn = rec["turn"]
        best = winner or max(judged, key=lambda n: (_RANK.get(n.label or "", 1), n.score or 0.0))
        assert best.sent is not None
        state.history = [best.sent, Msg(role="assistant", text=best.reply or "")]
        state.final_reply = best.reply
        if winner is not None:
            winner.status = "success"
            return Outcome(status="success")
        ranked = sorted(judged, key=lambda n: (-_RANK.get(n.label or "", 1), -(n.score or 0.0)))
        kept = ranked[:self.config.width]
        for n in ranked[self.config.width:]:
            n.status = "pruned_width"
        state.level += 1
        for n in kept:
            n.status = "kept"
        if state.level >= self.config.depth:
            return Outcome(status="budget")
        for n in kept:
            assert n.sent is not None
            score = f" (score {n.score:g})" if n.score is not None else ""
            n.a_msgs.append(Msg(role="user", text=fill(
                self.prompts["pair_feedback.txt"], iteration=state.level, n_iterations=self.config.depth,
                sent=describe_sent(n.sent, n.made), reply=(n.reply or "")[:REPLY_CHARS], label=n.label,
                score_note=score)))
        state.frontier = [n.id for n in kept]
        return self._branch(state)


__all__ = ["Node", "Tap", "TapConfig", "TapState", "parse_on_topic"]
