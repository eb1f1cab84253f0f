"""The attack interface for ``--mode adaptive``: typed, resumable state machines.

An attack (in the spirit of PyRIT's ``MultiTurnAttackStrategy[Context, Result]``, simpler)
is a registered class with

- a typed **config** (:class:`AttackConfig`, pydantic: ``--attack-opt K=V`` is validated
  against it before any request);
- a per-sample **state** (:class:`AttackState`, pydantic: serialisable, so a run killed
  mid-conversation resumes at the last completed step);
- an async :meth:`Attack.step` ``(state, replies) -> calls | Outcome``: given the replies
  to the calls it asked for last (none at the start), it updates the state and returns the
  next :class:`Call` s to make (all of one step run concurrently) or an :class:`Outcome`.

The driver (:meth:`Attack.drive`) makes the calls — attacker and evaluator calls on the
attacker client, target calls on the target client, judge calls through the judge
callable — accounts calls, tokens and cost per role, and hands the state to an
``on_step`` callback after every step (the run's mode runner stores it in the run store).
Messages in the state are :class:`Msg` s whose images are keys into the sample's image
table (:class:`SampleContext`), never inlined bytes, so stored states stay small.

Images: an attack may act on the image (:class:`ImageAction`): keep the sample's image,
send none, re-render a typographic image with new text (FigStep, via
:mod:`mmsafe.attacks.typography`), apply a registered visual transform, or move a keyword
out of the text into a FigStep image. Every new image is written content-addressed as
``<run>/assets/<sha256>.png`` (like the build stage's work dir) and recorded.

Attacker refusals and invalid outputs are attacker failures (statuses
``attacker_refused`` / ``attacker_invalid``), never evidence of target safety.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import hashlib
import io
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmsafe.attacks.dialogues import extract_json_object, is_refusal, load_prompt, sha16
from mmsafe.models.engine import accumulate as _acc, request_log
from mmsafe.types import ConfigError, ImagePart, Message, TextPart

if TYPE_CHECKING:
    from PIL import Image

    from mmsafe.models.engine import ModelClient

REPLY_CHARS = 4000  # how much of the target's reply the attacker sees
ERROR_STATUSES = ("attacker_error", "target_error")  # endpoint failures: stored as errors, retried on re-run
ATTACKER_FAILURES = ("attacker_refused", "attacker_invalid")  # never evidence of target safety

# --------------------------------------------------------------------------- judge callable


@dataclass
class TurnJudgment:
    """What the judge callable returns for one target reply."""

    label: str  # unsafe | safe | unscored
    rationale: str | None = None
    score: float | None = None
    parse_status: str = "ok"
    requests: list[dict[str, Any]] = field(default_factory=list)
    cost_usd: float = 0.0


JudgeFn = Callable[[list[Message], str, int], Awaitable[TurnJudgment]]
"""(target history ending with the user turn, the reply, 1-based turn) -> TurnJudgment."""

# --------------------------------------------------------------------------- serialisable pieces

Role = Literal["attacker", "evaluator", "target", "judge"]


class Msg(BaseModel):
    """A message in an attack's state: text plus image keys (see :class:`SampleContext`)."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    text: str
    images: list[str] = Field(default_factory=list)


class Call(BaseModel):
    """One request an attack asks the driver to make.

    ``attacker`` / ``evaluator``: ``messages`` to the attacker LLM with ``system``;
    ``target``: ``messages`` to the target (the run's system prompt is added by the driver);
    ``judge``: the target history ``messages`` (ending with a user turn) and the ``reply`` to
    judge at 1-based ``turn``."""

    model_config = ConfigDict(extra="forbid")
    id: str
    role: Role
    messages: list[Msg]
    system: str | None = None
    reply: str | None = None
    turn: int = 0


class Reply(BaseModel):
    """The answer to a :class:`Call` (a judge call carries the judgment)."""

    id: str
    role: Role
    ok: bool
    text: str | None = None
    error: str | None = None
    label: str | None = None
    score: float | None = None
    rationale: str | None = None
    parse_status: str = "ok"


class Outcome(BaseModel):
    """How an attack ended: a status (``success``, ``max_turns``, ``budget``, an attacker
    failure or an endpoint error) and the error text, if any."""

    status: str
    error: str | None = None


class AttackConfig(BaseModel):
    """Base of an attack's options (``--attack-opt K=V``); unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


class AttackState(BaseModel):
    """What every attack's per-sample state holds (subclasses add their own fields).

    ``transcript`` is the list of judged target exchanges (``turn``, ``user``, ``reply``,
    ``label``, ``images``, …) the run stores; ``images`` every image the attack made;
    ``history`` the target's final conversation; ``pending`` the calls of the step in flight
    (re-made when a killed run resumes); ``rounds`` the number of steps whose calls were made;
    ``defenses`` what a defended target's defense did at each target call (``round``, ``call``
    and the defense's record: action, moderation, added latency), in call order."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = 0
    pending: list[Call] = Field(default_factory=list)
    status: str | None = None
    error: str | None = None
    transcript: list[dict[str, Any]] = Field(default_factory=list)
    backtracked: list[dict[str, Any]] = Field(default_factory=list)
    attacker_log: list[dict[str, Any]] = Field(default_factory=list)
    images: list[dict[str, Any]] = Field(default_factory=list)
    history: list[Msg] = Field(default_factory=list)
    first_unsafe_turn: int | None = None
    final_reply: str | None = None
    target: dict[str, Any] = Field(default_factory=dict)
    attacker: dict[str, Any] = Field(default_factory=dict)
    judge_cost_usd: float = 0.0
    defenses: list[dict[str, Any]] = Field(default_factory=list)


@dataclass
class AttackResult:
    """A finished attack on one goal (what :meth:`Attack.run` returns)."""

    status: str
    history: list[Message]  # the target's final history (kept turns only)
    transcript: list[dict[str, Any]]  # judged exchanges: user, reply, label, images, ...
    backtracked: list[dict[str, Any]]  # removed (refused) exchanges, kept as evidence
    attacker_log: list[dict[str, Any]]  # every attacker call: raw output (truncated), parse status, plan
    requests: list[dict[str, Any]]  # request-log rows of every call (target, attacker, judge)
    first_unsafe_turn: int | None = None
    final_reply: str | None = None
    error: str | None = None
    target: dict[str, Any] = field(default_factory=dict)  # calls, tokens, cost, latency of target calls
    attacker: dict[str, Any] = field(default_factory=dict)  # calls, tokens, cost of attacker calls
    judge_cost_usd: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)  # images the attack made
    rounds: int = 0
    details: dict[str, Any] = field(default_factory=dict)  # the attack's own record (TAP's tree, ...)
    defenses: list[dict[str, Any]] = field(default_factory=list)  # a defended target's record per target call

    @property
    def backtracks(self) -> int:
        """How many refused exchanges were removed from the target's history."""
        return len(self.backtracked)


# --------------------------------------------------------------------------- images

SAMPLE_IMAGE = "sample"  # the key of the sample's own image in a SampleContext


class ImageAction(BaseModel):
    """What the attacker does with the image on one message (its output's ``image`` field).

    - ``keep``: the sample's image as it is (no image when the sample has none);
    - ``none``: no image;
    - ``typography``: a FigStep image of ``text`` (the text part stays the attacker's prompt);
    - ``transform``: the registered visual transform ``name`` (``blur``, ``noise``,
      ``figstep``, …; ``options`` its options) applied to the sample's image (typographic
      ones draw ``text``, else the goal);
    - ``move_keyword``: ``keyword`` drawn as a FigStep image and replaced in the text by
      "the activity shown in the image".
    """

    model_config = ConfigDict(extra="forbid")
    action: Literal["keep", "none", "typography", "transform", "move_keyword"] = "keep"
    text: str | None = Field(None, max_length=1000)  # drawn on a canvas: bounded work
    name: str | None = Field(None, max_length=100)
    keyword: str | None = Field(None, max_length=1000)
    options: dict[str, Any] = Field(default_factory=dict)


def parse_image_action(obj: dict[str, Any]) -> ImageAction | str:
    """The ``image`` field of an attacker's JSON as an :class:`ImageAction` (``keep`` when
    absent), or a one-line reason it is invalid (an attacker failure)."""
    raw = obj.get("image")
    if raw is None:
        return ImageAction()
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, dict):
        return "'image' must be an object like {\"action\": \"keep\"}"
    try:
        act = ImageAction.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        return f"image.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}"
    if act.action == "typography" and not (act.text or "").strip():
        return "image.text: typography needs the text to draw"
    if act.action == "transform" and not act.name:
        return "image.name: transform needs a visual transform name"
    if act.action == "transform" and (":" in (act.name or "") or "." in (act.name or "")):
        # an LLM's output never names code to import: registered transforms only
        return f"image.name: {act.name!r} is not a registered visual transform"
    for k, v in act.options.items():
        if not isinstance(v, (int, float, str, bool)):
            return f"image.options.{k}: a number or a word"
        if isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > LIMITS.get(k, 10_000):
            return f"image.options.{k}: {v} is out of range (at most {LIMITS.get(k, 10_000)})"
    if act.action == "move_keyword" and not (act.keyword or "").strip():
        return "image.keyword: move_keyword needs the keyword"
    return act


LIMITS = {"size": 2048, "parts": 16}  # bounds on what an attacker's image options may ask for (memory, time)


@dataclass
class Prepared:
    """A user message after its image action: text, image keys, records of new images."""

    text: str
    images: list[str]
    made: list[dict[str, Any]]


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class SampleContext:
    """What an attack works on for one sample (not stored): the goal, the scenario, the
    sample's image and the table of images by key, and where new images are written.

    Keys: :data:`SAMPLE_IMAGE` for the sample's image, a sha256 for every image the attack
    made. ``asset_root`` is the run directory (new images go to ``asset_root/assets``);
    ``None`` keeps them in memory only."""

    def __init__(self, goal: str, *, image: ImagePart | None = None, scenario: str = "unspecified",
                 sample_id: str | None = None, root: Path | None = None, asset_root: Path | None = None,
                 seed: int = 0):
        self.goal = goal
        self.scenario = scenario
        self.sample_id = sample_id
        self.root = root
        self.asset_root = asset_root
        self.seed = seed
        self.image = image
        self.images: dict[str, ImagePart] = {SAMPLE_IMAGE: image} if image is not None else {}
        self._pil: Image.Image | None = None
        self._made: list[dict[str, Any]] = []
        self._drawn: dict[str, list[dict[str, Any]]] = {}

    @property
    def has_image(self) -> bool:
        """Whether the sample has an image."""
        return self.image is not None

    def message(self, m: Msg) -> Message:
        """The :class:`~mmsafe.types.Message` to send (images first, then the text)."""
        # built from validated pieces: no re-validation (a request is built at every step)
        parts = [self.images[k] for k in m.images if k in self.images]
        if not parts:
            return Message.model_construct(role=m.role, content=m.text)
        return Message.model_construct(role=m.role, content=[*parts, TextPart.model_construct(text=m.text)])

    def messages(self, msgs: list[Msg]) -> list[Message]:
        """:meth:`message` of each."""
        return [self.message(m) for m in msgs]

    def image_ref(self, key: str) -> dict[str, Any]:
        """How the transcript names an image: its sha256 and where the file is."""
        if key == SAMPLE_IMAGE and self.image is not None:
            return {"key": key, "sha256": self.image.sha256, "source": "sample"}
        return next(({k: v for k, v in r.items() if k != "text"} | {"key": key}
                     for r in self._made if r["sha256"] == key), {"key": key, "sha256": key})

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Reload the images an attack made (after a resume) from ``asset_root/assets``."""
        self._made = list(records)
        for r in records:
            if r["sha256"] in self.images or self.asset_root is None:
                continue
            p = self.asset_root / r["path"]
            data = p.read_bytes()
            self.images[r["sha256"]] = ImagePart(uri=_data_uri(data, "image/png"), sha256=r["sha256"],
                                                 mime="image/png")

    def _sample_pil(self) -> Image.Image:
        if self._pil is None:
            from PIL import Image as PILImage

            from mmsafe.types import read_asset
            img = self.image
            if img is None:
                raise ValueError("the sample has no image to transform")
            if img.uri and img.uri.startswith("data:"):
                data = base64.b64decode(img.uri.split(",", 1)[1])
            elif img.path and self.root is not None:
                data = read_asset(img, self.root)
            else:
                raise ValueError("the sample's image cannot be read")
            with PILImage.open(io.BytesIO(data)) as im:
                im.load()
                self._pil = im.convert("RGB")
        return self._pil

    def _store(self, img: Image.Image, how: dict[str, Any], *, gray: bool = False) -> dict[str, Any]:
        # deterministic PNG; a typographic image (black text on white) is stored as 8-bit gray, losslessly:
        # a third of the bytes and ~5x faster to encode than RGB at the default level
        buf = io.BytesIO()
        (img.convert("L") if gray else img).save(buf, format="PNG", compress_level=3)
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        rec = {"sha256": sha, "path": f"assets/{sha}.png", **how}
        if sha not in self.images:
            if self.asset_root is not None:
                p = self.asset_root / rec["path"]
                if not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    tmp = p.with_name(f"{p.name}.{id(self)}.tmp")
                    tmp.write_bytes(data)
                    tmp.replace(p)
            self.images[sha] = ImagePart(uri=_data_uri(data, "image/png"), sha256=sha, mime="image/png")
        return rec

    def _draw(self, act: ImageAction) -> list[dict[str, Any]]:
        from mmsafe.attacks import typography
        if act.action == "typography":
            assert act.text is not None
            return [self._store(typography.figstep_image(act.text.strip()), {"how": "typography", "text": act.text},
                                gray=True)]
        if act.action == "move_keyword":
            kw = (act.keyword or "").strip()
            return [self._store(typography.figstep_image(kw), {"how": "move_keyword", "text": kw}, gray=True)]
        from mmsafe.attacks.visual import NEEDS_IMAGE, apply_visual
        name = act.name or ""
        src = self._sample_pil() if name in NEEDS_IMAGE else None
        res = apply_visual(name, text=act.text or self.goal, instruction=act.text or self.goal, image=src,
                           seed=self.seed, options=act.options)
        return [self._store(im, {"how": f"transform:{name}", **({"text": act.text} if act.text else {})})
                for im in res.images]

    def _render(self, act: ImageAction, text: str) -> tuple[str, list[str], list[dict[str, Any]]]:
        key = act.model_dump_json()
        recs = self._drawn.get(key)
        if recs is None:  # the same action twice in a sample (parallel streams, branches): drawn once
            recs = self._drawn[key] = self._draw(act)
        if act.action == "move_keyword":
            text = re.sub(re.escape((act.keyword or "").strip()), "the activity shown in the image", text,
                          flags=re.I)
        return text, [r["sha256"] for r in recs], recs

    async def prepare(self, act: ImageAction, text: str) -> Prepared | str:
        """The user message for ``text`` under image action ``act``, or a one-line reason the
        action cannot be done (an invalid attacker output). Rendering runs in a thread."""
        if act.action == "none":
            return Prepared(text, [], [])
        if act.action == "keep":
            return Prepared(text, [SAMPLE_IMAGE] if self.image is not None else [], [])
        if act.action == "transform" and (act.name or "") in ("noise", "blur", "jpeg", "rotate") \
                and self.image is None:
            return f"image transform {act.name!r} needs the sample's image, and it has none"
        try:
            t, keys, made = await asyncio.to_thread(self._render, act, text)
        except (ValueError, OSError) as e:  # TypographyError, unknown transform, unreadable image
            return f"image {act.action}: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        self._made.extend(made)
        return Prepared(t, keys, made)


# --------------------------------------------------------------------------- parsing attacker output


@dataclass
class Parsed:
    """An attacker output read as JSON: ``status`` ok | refused | invalid."""

    status: str
    obj: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Usable output."""
        return self.status == "ok"


def parse_json_output(text: str | None, keys: tuple[str, ...]) -> Parsed:
    """The first JSON object in an attacker's output and its message (the first of ``keys``
    holding a non-empty string): a refusal (in prose or as the message) is ``refused``;
    no JSON or no message is ``invalid``."""
    obj = extract_json_object(text)
    if obj is None:
        if is_refusal(text):
            return Parsed("refused", reason="the attacker declined")
        return Parsed("invalid", reason="no JSON object in the attacker output")
    msg = next((obj[k] for k in keys if isinstance(obj.get(k), str) and obj[k].strip()), None)
    if msg is None:
        if is_refusal(" ".join(str(v) for v in obj.values())):
            return Parsed("refused", obj, reason="the attacker declined (in JSON)")
        return Parsed("invalid", obj, reason=f"no non-empty {keys[0]!r}")
    if is_refusal(msg):
        return Parsed("refused", obj, reason=f"{keys[0]} is a refusal")
    return Parsed("ok", obj, prompt=msg.strip())


# --------------------------------------------------------------------------- the attack


@functools.lru_cache(maxsize=64)
def _prompt(name: str) -> str:
    """A packaged prompt file, read once per process (an attack is built per sample)."""
    return load_prompt(name)


C = TypeVar("C", bound=AttackConfig)
S = TypeVar("S", bound=AttackState)
StepCallback = Callable[[AttackState, list[dict[str, Any]], bool], None]
"""``on_step(state, request rows since the last call, final)``, after every step."""


class Attack(Generic[C, S]):
    """Base of an attack for ``--mode adaptive`` (registered in ``attacks`` with type ``adaptive``).

    Subclasses set :attr:`config_model`, :attr:`state_model`, :attr:`prompt_files` and
    implement :meth:`step`. Built with the attacker and target clients and a judge
    callable; options are the config's fields (validated; a bad one is a ConfigError)."""

    type: ClassVar[str] = "adaptive"
    name: ClassVar[str] = "attack"
    config_model: ClassVar[builtins.type[AttackConfig]] = AttackConfig
    state_model: ClassVar[builtins.type[AttackState]] = AttackState
    prompt_files: ClassVar[tuple[str, ...]] = ()
    multi_turn: ClassVar[bool] = True  # the target sees a conversation (False: single prompts, e.g. PAIR)

    def __init__(self, attacker: ModelClient, target: ModelClient, judge: JudgeFn, *, root: Path | None = None,
                 target_system: str | None = None, attacker_images: bool | None = None, config: C | None = None,
                 **options: Any):
        self.attacker = attacker
        self.target = target
        self.judge = judge
        self.root = root
        self.target_system = target_system
        self.attacker_images = attacker.cfg.capabilities.image if attacker_images is None else attacker_images
        self.config: C = config if config is not None else self.validate_options(options)  # type: ignore[assignment]
        self.prompts = {n: _prompt(n) for n in self.prompt_files}
        self.prompt_hash = sha16(*(self.prompts[n] for n in self.prompt_files))

    @classmethod
    def validate_options(cls, options: dict[str, Any], *, where: str = "attack option") -> AttackConfig:
        """The config from ``options``; a bad or unknown one is a ConfigError naming it and the choices."""
        try:
            return cls.config_model(**options)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"]) or "?"
            fields = ", ".join(cls.config_model.model_fields)
            raise ConfigError(f"{where} {key!r} of attack {cls.name!r}: {err['msg']} "
                              f"(options: {fields or 'none'})") from None

    def identity(self) -> dict[str, Any]:
        """The attack's settings and prompt hash (part of the run's fingerprint)."""
        c = self.attacker.cfg
        return {"attack": self.name,
                "attacker": {"name": c.name, "provider": c.provider, "model": c.model, "base_url": c.base_url,
                             "params": c.params},
                "prompt_hash": self.prompt_hash, **self.config.model_dump(mode="json"),
                "attacker_images": self.attacker_images}

    # -- the state machine
    def new_state(self, ctx: SampleContext) -> S:
        """The state before the first step."""
        return self.state_model()  # type: ignore[return-value]  # a subclass pairs S with its state_model

    async def step(self, state: S, replies: list[Reply], ctx: SampleContext) -> list[Call] | Outcome:
        """Read ``replies`` (to the calls of the previous step; empty at the start), update
        ``state`` and return the next calls (made concurrently) or the outcome."""
        raise NotImplementedError

    # -- the driver
    def context(self, goal: str, *, image: ImagePart | None = None, scenario: str = "unspecified",
                sample_id: str | None = None, asset_root: Path | None = None, seed: int = 0) -> SampleContext:
        """The :class:`SampleContext` of one goal."""
        return SampleContext(goal, image=image, scenario=scenario, sample_id=sample_id, root=self.root,
                             asset_root=asset_root, seed=seed)

    def load_state(self, data: dict[str, Any], ctx: SampleContext) -> S | None:
        """A stored state (``None`` when it no longer fits this attack), its images reloaded into ``ctx``."""
        try:
            state = self.state_model.model_validate(data)
            ctx.restore(state.images)
        except (ValidationError, OSError, KeyError):
            return None
        return state  # type: ignore[return-value]

    async def _one(self, call: Call, state: AttackState, ctx: SampleContext,
                   rows: list[dict[str, Any]]) -> Reply:
        if call.role == "judge":
            j = await self.judge(ctx.messages(call.messages), call.reply or "", call.turn)
            rows.extend(j.requests)
            state.judge_cost_usd += j.cost_usd
            return Reply(id=call.id, role="judge", ok=True, label=j.label, score=j.score, rationale=j.rationale,
                         parse_status=j.parse_status)
        if call.role == "target":
            client, system, acc = self.target, self.target_system, state.target
        else:
            client, system, acc = self.attacker, call.system, state.attacker
        res = await client.chat(ctx.messages(call.messages), root=self.root, system=system)
        rows.extend(request_log(res, "target" if call.role == "target" else "attacker", ctx.sample_id, client.name))
        _acc(acc, res)
        if call.role == "target" and isinstance(res.extra.get("defense"), dict):  # a defended target (--defense)
            state.defenses.append({"round": state.rounds, "call": call.id, **res.extra["defense"]})
        return Reply(id=call.id, role=call.role, ok=res.ok, text=res.text if res.ok else None, error=res.error)

    async def execute(self, calls: list[Call], state: AttackState, ctx: SampleContext,
                      rows: list[dict[str, Any]]) -> list[Reply]:
        """Make ``calls`` concurrently (in order of the list for the replies). A budget stop or
        a fatal endpoint error raised by one call is raised after all have ended."""
        if len(calls) == 1:
            return [await self._one(calls[0], state, ctx, rows)]
        got = await asyncio.gather(*(self._one(c, state, ctx, rows) for c in calls), return_exceptions=True)
        for g in got:
            if isinstance(g, BaseException):
                raise g
        return [g for g in got if isinstance(g, Reply)]

    async def drive(self, ctx: SampleContext, state: S | None = None,
                    on_step: StepCallback | None = None) -> S:
        """Run the state machine to its outcome from ``state`` (a stored one resumes: its
        pending calls are made again) or from the start."""
        if state is None:
            state = self.new_state(ctx)
        replies: list[Reply] = []
        rows: list[dict[str, Any]] = []
        if state.pending:
            replies = await self.execute(state.pending, state, ctx, rows)
        while True:
            out = await self.step(state, replies, ctx)
            if isinstance(out, Outcome):
                state.status, state.error, state.pending = out.status, out.error, []
                if on_step is not None:
                    on_step(state, rows, True)
                return state
            state.pending = out
            state.rounds += 1  # counted when stored: a resumed step is re-made, never counted twice
            if on_step is not None:
                on_step(state, rows, False)
                rows = []
            replies = await self.execute(out, state, ctx, rows)

    def result(self, state: AttackState, ctx: SampleContext, requests: list[dict[str, Any]]) -> AttackResult:
        """The :class:`AttackResult` of a finished state."""
        return AttackResult(status=state.status or "max_turns", history=ctx.messages(state.history),
                            transcript=state.transcript, backtracked=state.backtracked,
                            attacker_log=state.attacker_log, requests=requests,
                            first_unsafe_turn=state.first_unsafe_turn, final_reply=state.final_reply,
                            error=state.error, target=state.target, attacker=state.attacker,
                            judge_cost_usd=state.judge_cost_usd, images=state.images, rounds=state.rounds,
                            details=self.details(state), defenses=state.defenses)

    def details(self, state: AttackState) -> dict[str, Any]:
        """The attack's own part of the stored record (``extra.details``; e.g. TAP's tree)."""
        return {}

    async def run(self, goal: str, *, image: ImagePart | None = None, scenario: str = "unspecified",
                  sample_id: str | None = None, asset_root: Path | None = None) -> AttackResult:
        """Attack one goal in process (no store) and return the result with every request row."""
        ctx = self.context(goal, image=image, scenario=scenario, sample_id=sample_id, asset_root=asset_root)
        requests: list[dict[str, Any]] = []

        def keep(state: AttackState, rows: list[dict[str, Any]], final: bool) -> None:
            requests.extend(rows)

        state = await self.drive(ctx, on_step=keep)
        return self.result(state, ctx, requests)

    # -- helpers for subclasses
    def log_attacker(self, state: AttackState, reply: Reply, parsed: Parsed, **more: Any) -> dict[str, Any]:
        """Append one attacker call to ``state.attacker_log`` (raw output truncated) and return the entry."""
        entry = {"call": len(state.attacker_log) + 1, "parse": parsed.status, **more,
                 "raw": (reply.text or "")[:2000], **({"reason": parsed.reason} if parsed.reason else {})}
        state.attacker_log.append(entry)
        return entry

    def record_images(self, state: AttackState, made: list[dict[str, Any]]) -> None:
        """Add new image records to ``state.images`` (each sha256 once)."""
        have = {r["sha256"] for r in state.images}
        for r in made:
            if r["sha256"] not in have:
                state.images.append(r)
                have.add(r["sha256"])


__all__ = ["ATTACKER_FAILURES", "ERROR_STATUSES", "REPLY_CHARS", "SAMPLE_IMAGE", "Attack", "AttackConfig",
           "AttackResult", "AttackState", "Call", "ImageAction", "JudgeFn", "Msg", "Outcome", "Parsed", "Prepared",
           "Reply", "SampleContext", "StepCallback", "TurnJudgment", "parse_image_action", "parse_json_output"]
