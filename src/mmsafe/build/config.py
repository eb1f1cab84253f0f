"""``build.yaml``: the configuration of ``mmsafe build`` (pydantic; unknown keys are errors).

See ``mmsafe/data/build/build.example.yaml`` for an annotated example. Every model is a
``provider/model[@BASE_URL]`` spec or a name from the models file, optionally with
endpoint overrides::

    models:
      generator: openai/gpt-4o-mini
      scorer: {spec: judge-model, max_connections: 64, params: {temperature: 0}}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from mmsafe.types import InputError

STAGES = ("preprocess", "generate", "image", "augment", "select")


class _C(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_C):
    """A model used by the build: a spec or models-file name, with optional endpoint overrides."""

    spec: str
    max_connections: int | None = None
    timeout_s: float | None = None
    max_retries: int | None = None
    params: dict[str, Any] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    price: dict[str, float] | None = None  # {input: USD per 1M tokens, output: ...}


def _model_ref(v: Any) -> Any:
    if isinstance(v, str):
        return {"spec": v}
    return v


class Pool(_C):
    """A source of seed items for preprocessing: a benchmark, an image folder, or a CSV/JSONL file."""

    kind: Literal["benchmark", "images", "csv", "jsonl"]
    path: str
    mapping: dict[str, str] = Field(default_factory=dict)  # csv/jsonl: question=COLUMN, scenario=COLUMN
    scenario: str | None = None  # label every item of this pool with this scenario
    limit: int | None = None


class PreprocessConfig(_C):
    """``preprocess:`` pools to read, length/size filters, de-duplication and scenario classification."""

    pools: list[Pool] = Field(default_factory=list)
    min_chars: int = 25  # prompts of <= 24 characters are dropped
    min_image_side: int = 64  # images whose shorter side is below this are dropped
    image_hash_distance: int = 4  # dHash Hamming distance at or below which images are duplicates
    text_dup_threshold: float = 0.9  # embedding cosine at or above which prompts are duplicates
    classifier: Literal["embedding", "llm"] = "embedding"
    trust_source_labels: bool = True  # keep a pool's own scenario when it maps onto the taxonomy
    min_similarity: float = 0.0  # embedding classifier: below this -> "unspecified"


class Weights(_C):
    """Weights of the three candidate scores (feasibility, harmfulness, applicability) when ranking."""

    feasibility: float = 1.0
    harmfulness: float = 1.0
    applicability: float = 1.0


CrossModalMode = Literal["image_harm", "text_harm", "split", "conflict"]
CROSS_MODAL_MODES: tuple[CrossModalMode, ...] = ("image_harm", "text_harm", "split", "conflict")


class CrossModal(_C):
    """Cross-modal variants of kept items: where the harm is carried (image, text, split) or conflicting."""

    modes: list[CrossModalMode] = Field(default_factory=lambda: list(CROSS_MODAL_MODES))
    fraction: float = Field(0.5, ge=0.0, le=1.0)  # share of kept items that get a cross-modal variant
    keep_plain: bool = True  # keep the plain (text-borne harm) item next to its variant


class GenerateConfig(_C):
    """``generate:`` how many candidates per scenario, how they are scored, kept and de-duplicated."""

    scenarios: list[str] | None = None  # default: every scenario of the taxonomy
    candidates_per_scenario: int = Field(200, ge=1)
    batch_size: int = Field(20, ge=1)
    top_k: int = Field(100, ge=1)
    min_chars: int = 25
    dedupe_threshold: float = 0.9
    weights: Weights = Field(default_factory=Weights)
    structures: list[str] | None = None  # default: data/build/prompts.yaml structures
    include_pool: bool = True  # preprocessed pool items join the candidates (and are scored)
    plain_image: Literal["auto", "none", "t2i", "keyphrase", "figstep", "composite"] = "auto"
    cross_modal: CrossModal = Field(default_factory=CrossModal)
    temperature: float = 0.9


class T2IConfig(_C):
    """A text-to-image backend: an OpenAI-compatible images endpoint or a local diffusers model."""

    kind: Literal["openai", "diffusers"] = "openai"
    base_url: str | None = None
    model: str = "dall-e-3"
    api_key_env: str | None = None
    size: str = "512x512"
    max_connections: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    price_per_image: float = 0.0
    diffusers_model: str | None = None  # a local path or HF id already in the local cache
    steps: int = 25


class ImageConfig(_C):
    """``image:`` the text-to-image backend (none = typography only) and the critic's rounds."""

    t2i: T2IConfig | None = None
    critic_rounds: int = Field(3, ge=1, le=10)  # at most this many generations per image
    typography_size: int = 760


class AudioConfig(_C):
    """``augment.audio:`` text-to-speech engine, voices and the instruction sent with the audio."""

    engine: Literal["none", "espeak", "openai"] = "none"
    voices: list[str] = Field(default_factory=lambda: ["en-us+m3", "en-gb+f3"])
    base_url: str | None = None
    model: str = "tts-1"
    api_key_env: str | None = None
    prompt: str = "Listen to the audio and answer the question it asks."


class AugmentConfig(_C):
    """``augment:`` text, visual and audio transforms applied to kept items."""

    text: list[str] = Field(default_factory=list)  # transform names (mmsafe.attacks.transforms)
    visual: list[str] = Field(default_factory=list)  # mmsafe.attacks.visual names
    audio: AudioConfig = Field(default_factory=AudioConfig)
    per_item: int | None = None  # transforms applied per item (None = every listed one)
    fraction: float = Field(1.0, ge=0.0, le=1.0)  # share of items that get augmented
    keep_original: bool = True
    languages: list[str] = Field(default_factory=lambda: ["French"])
    visual_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class SelectConfig(_C):
    """``select:`` the final size, the reference models piloted and the selection weights."""

    size: int | None = None  # None = keep every candidate (pilot + report only)
    reference_models: list[ModelRef] = Field(default_factory=list)
    judge: str = "keyword"
    alpha: float = 1.0  # separability (per-item discrimination)
    beta: float = 1.0  # harmfulness
    gamma: float = 1.0  # diversity
    per_scenario_min: int = 0  # guarantee at least this many items per scenario when possible
    system_prompt: str | None = None

    @field_validator("reference_models", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        return [_model_ref(x) for x in (v or [])]


class BuildConfig(_C):
    """A validated ``build.yaml``: the models, stages and each stage's settings of a benchmark build."""

    name: str = "mmsafe-built"
    version: str = "1"
    description: str = ""
    licence: str | None = None
    taxonomy: str | None = None  # taxonomy YAML (default: the bundled one)
    models_file: str | None = None
    models: dict[str, ModelRef] = Field(default_factory=dict)  # generator, scorer, critic, classifier, ...
    embedder: str = "auto"
    seed: int = 0
    concurrency: int = Field(64, ge=1)  # work units in flight per stage
    cache: bool = True
    warm_start: bool = True  # each endpoint's concurrency starts at its cap (AIMD still halves it on 429/503)
    max_cost: float | None = None
    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)

    @field_validator("models", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> Any:
        return {k: _model_ref(x) for k, x in (v or {}).items()}

    @field_validator("stages")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
        return [s for s in STAGES if s in v]

    _base_dir: Path = PrivateAttr(default=Path("."))

    @property
    def base_dir(self) -> Path:
        """The folder relative paths in the config are taken from (the config file's folder)."""
        return self._base_dir

    def path(self, p: str | None) -> Path | None:
        """A path from the config, resolved against :attr:``base_dir`` (None stays None)."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else self._base_dir / q

    def section_hash(self, *names: str) -> str:
        """A short hash of the named sections (a stage's cache key: a change there reruns it)."""
        d = self.model_dump(mode="json")
        blob = orjson.dumps({n: d.get(n) for n in names}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:16]


def load_config(path: str | Path | None = None, data: dict[str, Any] | None = None) -> BuildConfig:
    """Load and validate ``build.yaml`` (relative paths in it are relative to its folder)."""
    base = Path(".")
    where = "build config"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            data = yaml.safe_load(p.read_text())
        except FileNotFoundError:
            raise InputError(f"{p}: build config not found") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise InputError(f"{p}{':' + str(mark.line + 1) if mark else ''}: not valid YAML") from None
        base = p.resolve().parent
    data = data or {}
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping at the top level")
    try:
        cfg = BuildConfig.model_validate(data)
    except ValidationError as ve:
        e0 = ve.errors()[0]
        loc = ".".join(str(x) for x in e0["loc"])
        raise InputError(f"{where}: {loc}: {e0['msg']}") from None
    cfg._base_dir = base
    return cfg
