"""A local transformers model as a target (extra ``hf``): a vision-language model
(``AutoProcessor`` + ``AutoModelForImageTextToText``) or a text-only causal LM.

``hf/MODEL`` names a local directory (``hf//abs/path``, ``hf/./rel/path``, ``hf/~/path``)
or a hub id that is **already in the local Hugging Face cache**: everything is loaded
with ``local_files_only=True`` and nothing is ever downloaded; ``trust_remote_code`` is
never set. A model that cannot be found raises :class:`ConfigError` saying so.

Generation runs in a worker thread (``asyncio.to_thread``) under a lock, one generate at
a time (the endpoint's concurrency cap is forced to 1). The processor's (or tokenizer's)
chat template is used when there is one; images go to the processor as PIL images.
Greedy decoding unless ``temperature > 0``; ``seed`` is honoured; ``max_tokens`` sets
``max_new_tokens``; ``timeout_s`` bounds a generation through ``max_time`` (the reply is
then cut short, ``finish_reason="time"``). Usage = prompt tokens (as the model saw them,
image tokens included) / generated tokens.

Load options (consumed at load, never passed to ``generate``): ``device`` (default
``cuda`` when available, else ``cpu``) and ``dtype`` (default ``float32`` on CPU,
``auto`` on GPU), in the endpoint's ``params``.

``hf/PATH.gguf`` (a local file whose name ends in ``.gguf``) loads a GGUF model through
transformers' ``gguf_file=``: the model and its tokenizer come from the file (the
``tokenizer`` load option, a local directory or cached hub id, takes the tokenizer from
there instead). transformers de-quantises every tensor (to ``float32`` on CPU), so this
is slow and memory-hungry next to llama.cpp (``local/PATH.gguf``), which keeps the
weights quantised; it needs the ``gguf`` and ``accelerate`` packages (both in the ``hf``
extra). GGUF models are text-only here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import inspect
import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch  # ImportError here becomes "pip install 'mmsafe[hf]'" in the registry
import transformers
from jinja2 import TemplateError  # a dependency of transformers' chat templates

from mmsafe.models.base import Capabilities, ChatResult, ConfigError, EndpointConfig, Provider, ProviderError
from mmsafe.models.openai_compat import video_frames_b64
from mmsafe.types import AssetError, Message, read_asset

DEFAULT_MAX_NEW_TOKENS = 512
LOAD_PARAMS = ("device", "dtype", "tokenizer")
# what transformers needs to read a GGUF file (gguf: the reader; accelerate: its model loading path)
GGUF_MODULES = ("gguf", "accelerate")
# settings this provider understands; anything else is reported in extra["ignored_params"]
_GEN_PARAMS = {"max_tokens", "max_new_tokens", "max_completion_tokens", "min_new_tokens", "temperature", "top_p",
               "top_k", "seed", "stop", "repetition_penalty", "do_sample", "num_beams", "no_repeat_ngram_size"}
# from_pretrained's dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before
_DTYPE_KW = "dtype" if tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56) else "torch_dtype"
_FALLBACK_TEMPLATE_ROLES = {"system": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"}


def _model_location(name: str) -> tuple[str, bool]:
    """-> (path or hub id, is_local_dir)."""
    p = Path(os.path.expanduser(name))
    if p.is_dir():
        return str(p.resolve()), True
    if name.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"hf/{name}: no model directory at {p}")
    return name, False


def _gguf_file(name: str) -> Path | None:
    """``name`` as a local GGUF model file (checked: a regular file that starts with the GGUF
    magic), or None when ``name`` does not end in ``.gguf``. ConfigError otherwise."""
    if not name.lower().endswith(".gguf"):
        return None
    p = Path(os.path.expanduser(name)).resolve()
    if not p.is_file():
        raise ConfigError(f"hf/{name}: no GGUF file at {p} (mmsafe never downloads weights: "
                          "give the path of a local .gguf file)")
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConfigError(f"hf/{name}: cannot read {p} ({e.strerror})") from None
    if magic != b"GGUF":
        raise ConfigError(f"hf/{name}: {p} is not a GGUF model file (it does not start with the GGUF magic)")
    return p


def _check_gguf_deps(name: str) -> None:
    """One line naming the extra when transformers cannot read GGUF files here."""
    missing = [m for m in GGUF_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"hf/{name}: reading a GGUF file with transformers needs the "
                          f"{' and '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
                          "pip install 'mmsafe[hf]'")


def _gguf_fingerprint(path: Path) -> str:
    """A cheap stable identity of a (possibly multi-GB) model file: its size and the sha256
    of its first and last 4 MiB (the same scheme as the ``local`` provider's)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            h.update(fh.read())
    return "gguf:" + h.hexdigest()[:32]


def _not_found(name: str, err: Exception) -> ConfigError:
    return ConfigError(f"hf/{name}: model not found locally ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                       "mmsafe never downloads weights: give a local directory (hf//path/to/model) or download the "
                       f"model into the Hugging Face cache first (e.g. `hf download {name}`)")


def _vision_classes() -> list[Any]:
    out = []
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):  # the second exists before v5 only
        cls = getattr(transformers, name, None)
        if cls is not None:
            out.append(cls)
    return out


def _device_and_dtype(name: str, opts: dict[str, Any]) -> tuple[str, Any]:
    """``params.device`` (default: cuda when available) and ``params.dtype`` as a torch dtype or ``"auto"``
    (default: auto on cuda, float32 on cpu)."""
    device = str(opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype: Any = opts.get("dtype") or ("auto" if device.startswith("cuda") else "float32")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ConfigError(f"hf/{name}: params.dtype {opts.get('dtype')!r} is not a torch dtype")
    return device, dtype


def _load_processor_and_tokenizer(name: str, loc: str) -> tuple[Any, Any]:
    """The model's processor (None when it has none) and tokenizer (the processor's, else its own)."""
    processor = None
    try:
        processor = transformers.AutoProcessor.from_pretrained(loc, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError):
        processor = None
    tokenizer = getattr(processor, "tokenizer", None) or processor
    if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(loc, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"hf/{name}: no tokenizer found with the model ({e})") from None
    return processor, tokenizer


def _load_model(name: str, loc: str, vision: bool, dtype: Any) -> Any:
    """The first model class that loads the weights: image-text classes first for a vision config, then causal LM."""
    classes = (_vision_classes() if vision else []) + [transformers.AutoModelForCausalLM]
    errors = []
    for cls in classes:
        try:
            return cls.from_pretrained(loc, local_files_only=True, **{_DTYPE_KW: dtype})
        except ValueError as e:  # "Unrecognized configuration class ... for this kind of AutoModel"
            errors.append(f"{cls.__name__}: {str(e).splitlines()[0][:160]}")
        except OSError as e:
            raise _not_found(name, e) from None
    raise ConfigError(f"hf/{name}: not a generative text or image-text model ({'; '.join(errors)})")


def _load_gguf(name: str, path: Path, tokenizer_from: Any, dtype: Any) -> tuple[Any, Any]:
    """(tokenizer, causal LM) from a GGUF file via ``gguf_file=``; the weights are de-quantised
    to ``dtype``. The tokenizer comes from the file unless ``tokenizer_from`` names a local
    directory or cached hub id. Any failure to read the file is one ConfigError line."""
    where, fname = str(path.parent), path.name
    if tokenizer_from:
        tloc, _ = _model_location(str(tokenizer_from))
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(tloc, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"hf/{name}: params.tokenizer {tokenizer_from!r}: no tokenizer found there "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    else:
        tokenizer = None
    try:
        if tokenizer is None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where, gguf_file=fname, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            where, gguf_file=fname, local_files_only=True, **{_DTYPE_KW: dtype})
    except ImportError as e:  # a GGUF reader or accelerate too old for this transformers
        raise ConfigError(f"hf/{name}: {str(e).splitlines()[0][:200]} (pip install -U 'mmsafe[hf]')") from None
    except Exception as e:  # struct.error, ValueError, KeyError ...: a truncated, corrupt or unsupported file
        msg = (str(e).splitlines() or [""])[0][:200]
        raise ConfigError(f"hf/{name}: transformers cannot load {path} as a GGUF model "
                          f"({type(e).__name__}: {msg})") from None
    return tokenizer, model


def _is_vision_config(config: Any) -> bool:
    from transformers.models.auto import modeling_auto as ma

    names: set[str] = set()
    for attr in ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"):
        names |= set(getattr(ma, attr, {}) or {})
    return config.model_type in names or getattr(config, "vision_config", None) is not None


def decode_wav(data: bytes, name: str) -> tuple[Any, int]:
    """A WAV file as ``(float32 mono samples in [-1, 1], sampling rate)``: what transformers' audio
    feature extractors take. PCM 8/16/32-bit; channels are averaged. AssetError naming the file otherwise."""
    import wave

    import numpy as np

    try:
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise AssetError(f"{name}: local models take audio as PCM WAV ({e})") from None
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dt = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype=dt).astype(np.float32) / float(np.iinfo(dt).max + 1)
    else:
        raise AssetError(f"{name}: {8 * width}-bit WAV is not supported (8, 16 or 32-bit PCM)")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x, rate


def detect_capabilities(cfg: EndpointConfig) -> Capabilities:
    """What the model can take, from its config and processor files alone (no weights
    loaded). Narrows ``cfg.capabilities``: it never claims more than they declare."""
    caps = cfg.capabilities.model_copy()
    if _gguf_file(cfg.model) is not None:  # text-only here; reading its config would parse the whole file
        caps.image = caps.audio = caps.video = False
        return caps
    loc, _ = _model_location(cfg.model)
    try:
        config = transformers.AutoConfig.from_pretrained(loc, local_files_only=True)
    except (OSError, ValueError) as e:
        raise _not_found(cfg.model, e) from None
    caps.image = caps.image and _is_vision_config(config)
    caps.audio = False  # audio input is not wired up for local models yet
    caps.video = False  # video goes as sampled frames (images)
    return caps


class HFProvider(Provider):
    """A local transformers model. ``encode`` decodes images to PIL; ``complete`` generates."""

    def __init__(self, cfg: EndpointConfig):
        # one generate at a time: the engine's limiter reads cfg.max_connections
        super().__init__(cfg.model_copy(update={"max_connections": 1}))
        self.gguf = _gguf_file(cfg.model)
        if self.gguf is not None:
            _check_gguf_deps(cfg.model)
            self.location, self.is_local = str(self.gguf), True
        else:
            if cfg.params.get("tokenizer"):
                raise ConfigError(f"hf/{cfg.model}: params.tokenizer is for hf/PATH.gguf only "
                                  "(a model directory brings its own tokenizer)")
            self.location, self.is_local = _model_location(cfg.model)
        self.model: Any = None
        self.processor: Any = None
        self.tokenizer: Any = None
        self.device: str = "cpu"
        self.supports_images = False
        self._caps: Capabilities | None = None
        self._lock = threading.Lock()  # held by the worker thread across a whole generate
        self._alock: tuple[Any, asyncio.Lock] | None = None  # (event loop, lock): one per loop
        self._fp: str | None = None
        self._takes_token_types = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            if self.model is not None:
                caps = self.cfg.capabilities.model_copy()
                caps.image = caps.image and self.supports_images
                caps.audio = False
                caps.video = False
                self._caps = caps
            else:
                self._caps = detect_capabilities(self.cfg)
        return self._caps

    async def start(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        return None  # the model stays loaded for the provider's lifetime

    def identity(self) -> dict[str, Any]:
        """Cache identity: the model's location plus a fingerprint of its files (sizes and
        mtimes for a local directory, the snapshot commit for a cached hub id), so that
        other weights at the same path never hit cached replies."""
        if self._fp is None:
            self._fp = _gguf_fingerprint(self.gguf) if self.gguf is not None else \
                _fingerprint(self.location, self.is_local)
        ident: dict[str, Any] = {"provider": "hf", "base_url": None, "model": self.location, "fingerprint": self._fp}
        tok = self.cfg.params.get("tokenizer")
        if self.gguf is not None and tok:  # another tokenizer is another model as far as replies go
            loc, local = _model_location(str(tok))
            ident["tokenizer"] = {"location": loc, "fingerprint": _fingerprint(loc, local)}
        return ident

    def _load(self) -> None:
        with self._lock:
            if self.model is not None:
                return
            name, loc = self.cfg.model, self.location
            opts = {k: self.cfg.params[k] for k in LOAD_PARAMS if k in self.cfg.params}
            device, dtype = _device_and_dtype(name, opts)
            if self.gguf is not None:
                vision, processor = False, None
                tokenizer, model = _load_gguf(name, self.gguf, opts.get("tokenizer"), dtype)
            else:
                try:
                    config = transformers.AutoConfig.from_pretrained(loc, local_files_only=True)
                except (OSError, ValueError) as e:
                    raise _not_found(name, e) from None
                vision = _is_vision_config(config)
                processor, tokenizer = _load_processor_and_tokenizer(name, loc)
                model = _load_model(name, loc, vision, dtype)
            model.to(device)
            model.eval()
            self.device = device
            self.processor = processor if processor is not tokenizer else None
            self.tokenizer = tokenizer
            self.supports_images = bool(
                vision and self.processor is not None and getattr(self.processor, "image_processor", None) is not None)
            self._caps = None
            # some tokenizers return token_type_ids that decoder-only models refuse in generate()
            self._takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
            self.model = model

    # ------------------------------------------------------------------ requests

    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        """-> ``{"system": str | None, "turns": [(role, [("text", str) | ("image", PIL.Image)
        | ("audio", (float32 samples, rate))])]}``; a video becomes ``video_frames`` images."""
        from PIL import Image, UnidentifiedImageError

        turns: list[tuple[str, list[tuple[str, Any]]]] = []
        sys_parts = [system] if system else []
        for m in messages:
            if m.role == "system":
                if m.text:
                    sys_parts.append(m.text)
                continue
            parts: list[tuple[str, Any]] = []
            if isinstance(m.content, str):
                parts.append(("text", m.content))
            else:
                for p in m.content:
                    if p.type == "text":
                        parts.append(("text", p.text))
                    elif p.type == "image":
                        if p.path is None or root is None:
                            raise AssetError(f"{p.uri}: the hf provider needs images as local files")
                        try:
                            with Image.open(io.BytesIO(read_asset(p, root))) as im:
                                parts.append(("image", im.convert("RGB")))
                        except (UnidentifiedImageError, OSError) as e:
                            raise AssetError(f"{p.path}: not a readable image ({e})") from None
                    elif p.type == "video":  # local models take images: frames sampled from the clip
                        if p.path is None or root is None:
                            raise AssetError(f"{p.uri}: the hf provider needs videos as local files")
                        n = self.cfg.capabilities.video_frames
                        for b64 in video_frames_b64(p, root, n):
                            with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
                                parts.append(("image", im.convert("RGB")))
                    else:  # audio: decoded for an audio processor (generation with it is not wired yet)
                        if p.path is None or root is None:
                            raise AssetError(f"{p.uri}: the hf provider needs audio as local files")
                        parts.append(("audio", decode_wav(read_asset(p, root, verify=True), p.path)))
            if turns and turns[-1][0] == m.role:
                turns[-1][1].extend(parts)
            else:
                turns.append((m.role, parts))
        return {"system": "\n\n".join(sys_parts) or None, "turns": turns}

    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        if self.model is None:
            await self.start()
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock[0] is not loop:
            self._alock = (loop, asyncio.Lock())
        # the asyncio lock keeps waiting requests off the thread pool; the threading lock
        # inside _generate is what guarantees one generate at a time
        async with self._alock[1]:
            return await asyncio.to_thread(self._generate, payload, params, timeout_s)

    # -- prompt

    def _template_owner(self) -> Any:
        for obj in (self.processor, self.tokenizer):
            if obj is not None and getattr(obj, "chat_template", None):
                return obj
        return None

    def _image_token(self) -> str:
        return str(getattr(self.processor, "image_token", None) or "<image>")

    def _prompt(self, payload: dict[str, Any]) -> tuple[str, list[Any]]:
        system, turns = payload.get("system"), payload["turns"]
        images = [v for _, parts in turns for k, v in parts if k == "image"]
        n_audio = sum(1 for _, parts in turns for k, _ in parts if k == "audio")
        if n_audio:
            raise ProviderError(f"hf/{self.cfg.model}: audio input is not wired into local generation yet "
                                f"({n_audio} clip(s) sent)")
        if images and not self.supports_images:
            raise ProviderError(f"hf/{self.cfg.model} takes no image input ({len(images)} image(s) sent)")
        owner = self._template_owner()
        if owner is None:
            return self._fallback_prompt(system, turns), images
        structured = owner is self.processor  # processor templates take content-part lists
        conv = []
        for role, parts in turns:
            if structured:
                content: Any = [{"type": "image"} if k == "image" else {"type": "text", "text": v} for k, v in parts]
            else:
                content = "\n".join(v for k, v in parts if k == "text")
            conv.append({"role": role, "content": content})
        if system:
            sys_msg = {"role": "system", "content": [{"type": "text", "text": system}] if structured else system}
            try:
                return owner.apply_chat_template([sys_msg, *conv], add_generation_prompt=True, tokenize=False), images
            except (TemplateError, ValueError, TypeError, KeyError):
                # templates that reject a system role: prepend it to the first user turn
                conv = _prepend_system(conv, system, structured)
        return owner.apply_chat_template(conv, add_generation_prompt=True, tokenize=False), images

    def _fallback_prompt(self, system: str | None, turns: list) -> str:
        lines = [f"SYSTEM: {system}"] if system else []
        for role, parts in turns:
            body = " ".join(self._image_token() if k == "image" else v for k, v in parts)
            lines.append(f"{_FALLBACK_TEMPLATE_ROLES.get(role, role.upper())}: {body}")
        lines.append("ASSISTANT:")
        return "\n".join(lines)

    # -- generate (worker thread)

    def _generate(self, payload: dict[str, Any], params: dict[str, Any], timeout_s: float) -> ChatResult:
        with self._lock:
            t0 = time.perf_counter()
            prompt, images = self._prompt(payload)
            tok = self.tokenizer
            bos = getattr(tok, "bos_token", None)
            special = not (bos and prompt.startswith(bos))  # the template already wrote BOS
            try:
                if self.processor is not None:
                    kw: dict[str, Any] = {"text": [prompt], "return_tensors": "pt", "add_special_tokens": special}
                    if images:
                        kw["images"] = images
                    inputs = self.processor(**kw)
                else:
                    inputs = tok(prompt, return_tensors="pt", add_special_tokens=special)
            except (ValueError, TypeError, RuntimeError) as e:
                raise ProviderError(f"hf/{self.cfg.model}: could not prepare the input: {e}") from None
            inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()
                      if k != "token_type_ids" or self._takes_token_types}
            gen, ignored = self._gen_kwargs(params, timeout_s)
            n_in = int(inputs["input_ids"].shape[1])
            try:
                with torch.inference_mode():
                    out = self.model.generate(**inputs, **gen)
            except (ValueError, TypeError, RuntimeError, IndexError) as e:
                raise ProviderError(f"hf/{self.cfg.model}: generation failed: {type(e).__name__}: {e}") from None
            seq = out.sequences if hasattr(out, "sequences") else out
            new = seq[0, n_in:].tolist()
            eos = _eos_ids(self.model, tok)
            finish = "stop" if new and new[-1] in eos else "length"
            if finish == "length" and len(new) < gen["max_new_tokens"]:
                finish = "time" if time.perf_counter() - t0 >= timeout_s else "stop"  # stop string / max_time
            n_out = len(new)
            while new and new[-1] in eos:
                new.pop()
            text = tok.decode(new, skip_special_tokens=True).strip()
            res = ChatResult(text=text, finish_reason=finish, input_tokens=n_in, output_tokens=n_out,
                             model=f"hf/{self.cfg.model}", latency_ms=(time.perf_counter() - t0) * 1000)
            if ignored:
                res.extra["ignored_params"] = ignored
            return res

    def _gen_kwargs(self, params: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], list[str]]:
        p = {k: v for k, v in params.items() if k not in LOAD_PARAMS}
        ignored = sorted(k for k in p if k not in _GEN_PARAMS)
        max_new = p.get("max_new_tokens") or p.get("max_tokens") or p.get("max_completion_tokens") \
            or DEFAULT_MAX_NEW_TOKENS
        gen: dict[str, Any] = {"max_new_tokens": int(max_new), "max_time": float(timeout_s)}
        temperature = float(p.get("temperature") or 0.0)
        sample = bool(p.get("do_sample", temperature > 0))
        gen["do_sample"] = sample
        if sample:
            gen["temperature"] = temperature or 1.0
            for k in ("top_p", "top_k"):
                if p.get(k) is not None:
                    gen[k] = p[k]
        else:  # greedy: neutralise sampling defaults from the model's generation_config
            gen.update(temperature=None, top_p=None, top_k=None)
        for k in ("repetition_penalty", "num_beams", "min_new_tokens", "no_repeat_ngram_size"):
            if p.get(k) is not None:
                gen[k] = p[k]
        if p.get("stop"):
            gen["stop_strings"] = [p["stop"]] if isinstance(p["stop"], str) else list(p["stop"])
            gen["tokenizer"] = self.tokenizer
        if p.get("seed") is not None:
            transformers.set_seed(int(p["seed"]))
        tok = self.tokenizer
        if getattr(self.model.generation_config, "pad_token_id", None) is None:
            pad = getattr(tok, "pad_token_id", None)
            if pad is None:
                eos = sorted(_eos_ids(self.model, tok))
                pad = eos[0] if eos else 0
            gen["pad_token_id"] = pad
        return gen, ignored


def _fingerprint(location: str, is_local: bool) -> str:
    if is_local:
        h = hashlib.sha256()
        for f in sorted(Path(location).iterdir()):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return "files:" + h.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(location, "config.json")
        if isinstance(p, str):
            return "snapshot:" + Path(p).parent.name
    except (ImportError, OSError, ValueError):
        pass
    return "unknown"


def _eos_ids(model: Any, tok: Any) -> set[int]:
    ids: set[int] = set()
    for v in (getattr(model.generation_config, "eos_token_id", None), getattr(tok, "eos_token_id", None)):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return ids


def _prepend_system(conv: list[dict[str, Any]], system: str, structured: bool) -> list[dict[str, Any]]:
    conv = [dict(m) for m in conv]
    for m in conv:
        if m["role"] == "user":
            if structured:
                m["content"] = [{"type": "text", "text": system}, *m["content"]]
            else:
                m["content"] = f"{system}\n\n{m['content']}"
            break
    return conv
