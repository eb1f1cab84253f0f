"""The one data model every stage of mmsafe shares (pydantic v2).

Images and audio are *references* (a path relative to the benchmark root, or a URI)
plus a sha256 of their bytes; bytes are read only when a request is sent
(:func:`mmsafe.types.read_asset`). Nothing here imports another mmsafe module.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMAT_VERSION = 1
MAX_ASSET_BYTES = 20 * 1024 * 1024  # per image/audio file; larger is refused as "oversized"
# video: the containers mmsafe reads, their MIME types and the limits a video file must keep
VIDEO_MIME = {"mp4": "video/mp4", "webm": "video/webm", "gif": "image/gif"}
MAX_VIDEO_BYTES = 20 * 1024 * 1024  # Gemini's inline-request limit; larger is refused as "oversized"
MAX_VIDEO_SECONDS = 180.0  # longer videos are refused (preflight and send)

Role = Literal["system", "user", "assistant"]
Label = Literal["unsafe", "safe", "unscored"]
ParseStatus = Literal["ok", "unparsable", "error", "refused", "skipped", "abstained"]
"""How a verdict was reached: parsed, unparsable, a judge error, a judge refusal, or not asked."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- content


class TextPart(_Model):
    """A text part of a message."""

    type: Literal["text"] = "text"
    text: str


class _AssetPart(_Model):
    path: str | None = None  # relative to the benchmark root, POSIX separators
    uri: str | None = None  # http(s):// or data: URI when not stored locally
    sha256: str | None = None
    mime: str | None = None

    @field_validator("path")
    @classmethod
    def _relative_inside_root(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = PurePosixPath(v.replace("\\", "/"))
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"asset path {v!r} escapes the benchmark root")
        return str(p)

    @model_validator(mode="after")
    def _one_location(self) -> _AssetPart:
        if not self.path and not self.uri:
            raise ValueError("an asset part needs a path or a uri")
        return self


class ImagePart(_AssetPart):
    """An image in a message: a file under the benchmark root (``path``) or a ``uri``, with its sha256."""

    type: Literal["image"] = "image"


class AudioPart(_AssetPart):
    """An audio clip in a message: a file under the benchmark root (``path``) or a ``uri``, with its sha256."""

    type: Literal["audio"] = "audio"


class VideoPart(_AssetPart):
    """A video clip (mp4, webm or gif) by reference. Sent natively where the target takes video,
    else as sampled frames (see ``mmsafe.media.video``)."""

    type: Literal["video"] = "video"

    @model_validator(mode="after")
    def _video_container(self) -> VideoPart:
        if self.mime is None and self.path is not None:
            ext = self.path.rsplit(".", 1)[-1].lower() if "." in self.path else ""
            if ext not in VIDEO_MIME:
                raise ValueError(f"video {self.path!r}: not an mp4, webm or gif file")
        return self


AssetPart = ImagePart | AudioPart | VideoPart
ContentPart = Annotated[TextPart | ImagePart | AudioPart | VideoPart, Field(discriminator="type")]


class Message(_Model):
    """One turn of a conversation: a role and plain text or a list of text/image/audio/video parts."""

    role: Role
    content: str | list[ContentPart]

    @property
    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def assets(self) -> list[AssetPart]:
        """The message's image, audio and video parts, in order."""
        if isinstance(self.content, str):
            return []
        return [p for p in self.content if not isinstance(p, TextPart)]


class Conversation(_Model):
    """A standalone dialogue (used by moderation input and live/adaptive transcripts)."""

    id: str | None = None
    messages: list[Message]


# --------------------------------------------------------------------------- samples


class Sample(_Model):
    """One benchmark item: a conversation ending in a user turn, the request it pursues, and its labels.

    ``turns`` (user turns) is computed when left at 0 and checked otherwise.
    """

    id: str
    question: str  # the underlying harmful request the conversation pursues
    messages: list[Message]  # the conversation; ends with a user turn
    scenario: str = "unspecified"
    category: str | None = None
    source: str | None = None
    method: str | None = None  # attack / jailbreak method, None = plain
    turns: int = 0  # number of user turns; computed when 0
    metadata: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _nonempty_id(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("sample id is empty")
        return v

    @model_validator(mode="after")
    def _ends_in_user_turn(self) -> Sample:
        if not self.messages:
            raise ValueError("conversation is empty")
        if self.messages[-1].role != "user":
            raise ValueError("conversation must end with a user turn")
        n_user = sum(1 for m in self.messages if m.role == "user")
        if self.turns == 0:
            self.turns = n_user
        elif self.turns != n_user:
            raise ValueError(f"turns={self.turns} but the conversation has {n_user} user turns")
        return self

    def assets(self) -> list[AssetPart]:
        """Every image, audio and video part of the conversation, in order."""
        return [a for m in self.messages for a in m.assets]

    @property
    def modalities(self) -> set[str]:
        """The modalities the sample carries: always ``text``, plus ``image`` / ``audio`` / ``video`` when present."""
        mods = {"text"}
        for a in self.assets():
            mods.add(a.type)
        return mods


class BenchmarkCounts(_Model):
    """Sample counts of a benchmark: by scenario, turns, method and modality."""

    n_samples: int = 0
    by_scenario: dict[str, int] = Field(default_factory=dict)
    by_turns: dict[str, int] = Field(default_factory=dict)
    by_method: dict[str, int] = Field(default_factory=dict)
    modalities: dict[str, int] = Field(default_factory=dict)  # samples carrying each modality
    max_turns: int = 0
    n_assets: int = 0

    def add(self, s: Sample) -> None:
        """Count one more sample."""
        self.n_samples += 1
        self.by_scenario[s.scenario] = self.by_scenario.get(s.scenario, 0) + 1
        k = str(s.turns)
        self.by_turns[k] = self.by_turns.get(k, 0) + 1
        m = s.method or "none"
        self.by_method[m] = self.by_method.get(m, 0) + 1
        for mod in s.modalities:
            self.modalities[mod] = self.modalities.get(mod, 0) + 1
        self.max_turns = max(self.max_turns, s.turns)


class BenchmarkManifest(_Model):
    """A benchmark's ``manifest.json``: name, version, format, taxonomy, counts, licence and provenance."""

    name: str
    version: str = "1"
    format_version: int = FORMAT_VERSION
    description: str = ""
    taxonomy: dict[str, Any] = Field(default_factory=dict)  # category -> [scenarios]
    counts: BenchmarkCounts = Field(default_factory=BenchmarkCounts)
    licence: str | None = None
    source: str | None = None
    provenance: dict[str, Any] = Field(default_factory=dict)
    created: float = Field(default_factory=time.time)
    samples_sha256: str | None = None  # of samples.jsonl as written: lets readers skip re-validation

    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- results


class Usage(_Model):
    """Token counts of one or more model calls (they add up with ``+``)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(input_tokens=self.input_tokens + other.input_tokens,
                     output_tokens=self.output_tokens + other.output_tokens)


class Response(_Model):
    """One model reply (or the error that took its place). Immutable once stored."""

    sample_id: str
    text: str | None = None
    model: str = ""
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 1
    cached: bool = False
    error: str | None = None
    created: float = Field(default_factory=time.time)
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the model replied (no error, text present)."""
        return self.error is None and self.text is not None


class JudgeIdentity(_Model):
    """Who judged: enough to tell two judges apart and to reproduce one."""

    kind: str  # keyword | rubric | jury | guard | offline | ...
    models: list[str] = Field(default_factory=list)
    prompt_hash: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None  # human-readable note, e.g. "baseline: refusal keywords"

    @property
    def id(self) -> str:
        """The judge id: ``KIND-`` and a hash of kind, models, prompt hash and settings."""
        h = hashlib.sha256(
            self.model_dump_json(include={"kind", "models", "prompt_hash", "settings"}).encode()
        ).hexdigest()[:12]
        return f"{self.kind}-{h}"

    @property
    def name(self) -> str:
        """A readable name: ``kind:model1,model2``."""
        return self.kind + (":" + ",".join(self.models) if self.models else "")


class Verdict(_Model):
    """A judge's verdict on one response: label, optional score/rating, rationale and how it was parsed."""

    sample_id: str
    judge_id: str
    label: Label
    score: float | None = None  # continuous harm score in [0, 1] where the judge gives one
    rating: float | None = None  # 1-5 safety rating (5 = safest) where the judge gives one
    rationale: str | None = None
    raw: list[Any] = Field(default_factory=list)  # raw judge output(s)
    parse_status: ParseStatus = "ok"
    categories: list[str] = Field(default_factory=list)
    cost_usd: float = 0.0
    usage: Usage = Field(default_factory=Usage)
    created: float = Field(default_factory=time.time)
    extra: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- assets


class InputError(ValueError):
    """Bad user input (file, line, field or option named in the message). The CLI exits 2."""


class ConfigError(InputError):
    """A model spec, models file, plugin or credential problem (CLI exit code 2)."""


class AssetError(InputError):
    """An image, audio or video reference that cannot be used (missing, escaping, oversized, corrupt, too long)."""


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def asset_file(part: AssetPart, root: Path, *, follow_links: bool = False) -> str:
    """Resolve a stored asset's path, refusing anything outside ``root``.

    Part paths are already relative with no ``..`` (validated on load), so a join and a
    prefix check suffice on the hot path; ``follow_links=True`` also resolves symlinks
    (done once per run in the preflight) so a link cannot point outside the root.
    """
    if part.path is None:
        raise AssetError(f"asset has no local path (uri={part.uri!r})")
    base = _real_root(str(root))
    p = os.path.join(base, part.path)
    if follow_links:
        p = os.path.realpath(p)
    if not p.startswith(base + os.sep):
        raise AssetError(f"{part.path}: path escapes the benchmark root")
    return p


def read_asset(part: AssetPart, root: Path, *, verify: bool = False,
               max_bytes: int = MAX_ASSET_BYTES) -> bytes:
    """Read an asset's bytes (only at send time). Raises AssetError with the path named."""
    p = asset_file(part, root)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise AssetError(f"{part.path}: {size} bytes is over the {max_bytes}-byte limit")
            data = f.read()
    except FileNotFoundError:
        raise AssetError(f"{part.path}: file not found") from None
    except PermissionError:
        raise AssetError(f"{part.path}: file not readable") from None
    except IsADirectoryError:
        raise AssetError(f"{part.path}: is a directory") from None
    if verify and part.sha256 and hashlib.sha256(data).hexdigest() != part.sha256:
        raise AssetError(f"{part.path}: sha256 does not match the benchmark")
    return data


_VERIFIED: dict[tuple[str, str, str, int, int], None] = {}
_VERIFIED_LOCK = threading.Lock()


def verify_asset(part: AssetPart, root: Path) -> None:
    """Check a file-backed asset against its sha256, as a send would (AssetError naming the
    file otherwise), without re-reading a file already checked in this process and unchanged
    since (same size and mtime). For replies served from the response cache: a file edited
    after the benchmark was written fails the same way whether or not its reply is cached."""
    if part.path is None or not part.sha256:
        return
    p = asset_file(part, root)
    try:
        st = os.stat(p)
    except OSError:  # missing, unreadable ...: the same AssetError a send gives
        read_asset(part, root, verify=True)
        raise AssetError(f"{part.path}: file not readable") from None
    key = (str(root), part.path, part.sha256, st.st_size, st.st_mtime_ns)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            return
    read_asset(part, root, verify=True)
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= 65536:
            _VERIFIED.clear()
        _VERIFIED[key] = None


def sha256_bytes(data: bytes) -> str:
    """The hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()
