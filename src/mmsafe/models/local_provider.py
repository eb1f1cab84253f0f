"""A local GGUF model served by llama.cpp (extra ``local``: ``llama-cpp-python[server]``).

``local/PATH.gguf`` names the model file (``local//abs/path.gguf``, ``local/./rel.gguf``,
``local/~/models/m.gguf``); options follow a ``?`` (``local/m.gguf?n_ctx=4096&slots=2``)
or, in a models file, go under ``server:``::

    models:
      smol:
        gguf: ~/models/SmolLM2-135M-Instruct.Q4_1.gguf   # = provider: local, model: PATH
        server: {n_ctx: 2048, slots: 2}
        params: {max_tokens: 256}

Server options: ``n_ctx`` (context window in tokens, default 2048; the model's own
training context is the upper bound), ``slots`` (parallel requests: llama-cpp-python's
server answers one at a time, so each slot is one server process; default 1),
``n_threads`` (per slot; default the cores divided among the slots), ``n_batch``,
``chat_format`` (default: the template stored in the GGUF file), ``startup_timeout_s``.

On ``start`` the provider starts (or joins: one per file and options per process, shared
by target, judge, attacker …) ``python -m llama_cpp.server`` on free loopback ports,
waits until ``/v1/models`` answers, and then every request takes mmsafe's ordinary
OpenAI-compatible path (:class:`~mmsafe.models.openai_compat.OpenAIProvider`: engine,
limiter, retries, cache and ledger unchanged). ``close`` releases the server; see
:mod:`mmsafe.models.llama_server` for how no server outlives mmsafe.

The context window is on the endpoint (``cfg.context_window``) for judges to budget their
prompts. ``max_tokens`` is capped so that prompt + reply fits the window once the prompt's
size is known (the server counts it); a prompt that alone fills the window is a clear
per-request error naming ``n_ctx``, not a crash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from mmsafe.models.base import Capabilities, ChatResult, ConfigError, EndpointConfig, Provider, ProviderError
from mmsafe.models.llama_server import ServerSpec, ServerStartError, SharedServer, acquire, release
from mmsafe.models.openai_compat import OpenAIProvider, encode_openai_messages
from mmsafe.types import Message

_MISSING = [m for m in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
            if importlib.util.find_spec(m) is None]
if _MISSING:  # the registry turns this into "pip install 'mmsafe[local]'"
    raise ImportError(f"the local provider needs llama-cpp-python[server] (missing: {', '.join(_MISSING)})")

DEFAULT_N_CTX = 2048
# option -> (type, lower bound)
SERVER_OPTIONS: dict[str, tuple[type, float | None]] = {
    "n_ctx": (int, 64), "slots": (int, 1), "n_threads": (int, 1), "n_batch": (int, 1),
    "chat_format": (str, None), "startup_timeout_s": (float, 1.0)}
_ALIASES = {"n_parallel": "slots", "parallel": "slots", "context_window": "n_ctx"}


# --------------------------------------------------------------------------- GGUF header


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def _read(fh: BinaryIO, n: int) -> bytes:
    b = fh.read(n)
    if len(b) != n:
        raise ValueError("truncated header")
    return b


def _read_value(fh: BinaryIO, vtype: int, keep: bool) -> Any:
    if vtype in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[vtype]
        return struct.unpack(fmt, _read(fh, struct.calcsize(fmt)))[0]
    if vtype == 8:  # string
        (n,) = struct.unpack("<Q", _read(fh, 8))
        raw = _read(fh, n)
        return raw.decode("utf-8", "replace") if keep else None
    if vtype == 9:  # array: element type, count, elements
        etype, count = struct.unpack("<IQ", _read(fh, 12))
        if etype in _GGUF_SCALARS:  # skip without decoding
            fh.seek(count * struct.calcsize(_GGUF_SCALARS[etype]), os.SEEK_CUR)
            return None
        for _ in range(count):
            _read_value(fh, etype, False)
        return None
    raise ValueError(f"unknown metadata value type {vtype}")


def gguf_metadata(path: Path, wanted: tuple[str, ...] = ("general.architecture", "general.name")) -> dict[str, Any]:
    """The scalar metadata of a GGUF file's header that ``wanted`` names, plus the
    architecture's ``context_length``. Reads only the header; stops once all are found.
    Raises ValueError when the file is not GGUF."""
    out: dict[str, Any] = {}
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", _read(fh, 20))
        if version < 2:
            raise ValueError(f"GGUF version {version} is too old")
        for _ in range(n_kv):
            (klen,) = struct.unpack("<Q", _read(fh, 8))
            key = _read(fh, klen).decode("utf-8", "replace")
            (vtype,) = struct.unpack("<I", _read(fh, 4))
            arch = out.get("general.architecture")
            keep = key in wanted or (arch is not None and key == f"{arch}.context_length")
            val = _read_value(fh, vtype, keep)
            if keep:
                out[key] = val
            if arch is not None and all(k in out for k in wanted) and f"{arch}.context_length" in out:
                break
    arch = out.get("general.architecture")
    if arch is not None and f"{arch}.context_length" in out:
        out["context_length"] = int(out[f"{arch}.context_length"])
    return out


def file_fingerprint(path: Path) -> str:
    """A cheap stable identity of a (possibly multi-GB) model file: its size and the
    sha256 of its first and last 4 MiB (a different model never shares these)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        h.update(fh.read(4 << 20))
        if size > 8 << 20:
            fh.seek(-(4 << 20), os.SEEK_END)
            h.update(fh.read())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- options


def split_model(model: str) -> tuple[str, dict[str, str]]:
    """``PATH.gguf?k=v&k2=v2`` -> (PATH.gguf, {k: v})."""
    path, _, query = model.partition("?")
    opts: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        if "=" not in item:
            raise ConfigError(f"local/{model}: option {item!r} is not KEY=VALUE")
        k, v = item.split("=", 1)
        opts[k.strip()] = v.strip()
    return path, opts


def server_options(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Validate and type the server options (unknown keys and bad values are ConfigErrors)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = _ALIASES.get(key, key)
        if k not in SERVER_OPTIONS:
            raise ConfigError(f"{name}: unknown local server option {key!r}; choose from "
                              + ", ".join(sorted(SERVER_OPTIONS)))
        typ, lo = SERVER_OPTIONS[k]
        try:
            v = typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: server option {key}={value!r}: expected {typ.__name__}") from None
        if lo is not None and isinstance(v, (int, float)) and v < lo:
            raise ConfigError(f"{name}: server option {key}={value!r}: must be at least {lo:g}")
        out[k] = v
    return out


def resolve_gguf(name: str, path: str) -> Path:
    """The model file, checked: exists, is a regular file, starts with the GGUF magic."""
    p = Path(os.path.expanduser(path)).resolve()
    if not p.exists():
        raise ConfigError(f"{name}: model file not found: {p}")
    if not p.is_file():
        raise ConfigError(f"{name}: {p} is not a file (give the path of a .gguf model file)")
    try:
        with p.open("rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ConfigError(f"{name}: cannot read {p} ({e.strerror})") from None
    if magic != b"GGUF":
        raise ConfigError(f"{name}: {p} is not a GGUF model file (llama.cpp reads GGUF only)")
    return p


# --------------------------------------------------------------------------- provider


class LocalProvider(Provider):
    """``local/PATH.gguf``: a llama.cpp server this process starts, spoken to over the
    OpenAI-compatible wire format (one :class:`OpenAIProvider` per server slot)."""

    default_capabilities = Capabilities(image=False, audio=False, multi_turn=True, system_prompt=True,
                                        editable_history=True)

    def __init__(self, cfg: EndpointConfig):
        path, query = split_model(cfg.model)
        raw: dict[str, Any] = dict(getattr(cfg, "server", None) or {})
        raw.update(query)
        opts = server_options(cfg.name, raw)
        gguf = resolve_gguf(cfg.name, path)
        try:
            meta = gguf_metadata(gguf)
        except (ValueError, OSError) as e:
            raise ConfigError(f"{cfg.name}: {gguf}: cannot read the GGUF header ({e})") from None
        n_ctx = int(opts.get("n_ctx", DEFAULT_N_CTX))
        train_ctx = meta.get("context_length")
        if train_ctx and n_ctx > train_ctx:
            raise ConfigError(f"{cfg.name}: n_ctx={n_ctx} is over the model's training context of {train_ctx} tokens")
        self.spec = ServerSpec(gguf=str(gguf), n_ctx=n_ctx, slots=int(opts.get("slots", 1)),
                               n_threads=opts.get("n_threads"), n_batch=int(opts.get("n_batch", 512)),
                               chat_format=opts.get("chat_format"),
                               startup_timeout_s=float(opts.get("startup_timeout_s", 120.0)))
        self.gguf = gguf
        self.meta = meta
        self._fingerprint = file_fingerprint(gguf)
        update: dict[str, Any] = {"max_connections": min(cfg.max_connections, self.spec.slots), "base_url": None}
        if "context_window" in type(cfg).model_fields:
            update["context_window"] = n_ctx
        super().__init__(cfg.model_copy(update=update))
        self.context_window = n_ctx
        self.server: SharedServer | None = None
        self._slots: list[OpenAIProvider] = []
        self._busy: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.server is not None:
            return
        try:
            srv = await acquire(self.spec)
        except ServerStartError as e:
            raise ConfigError(f"{self.cfg.name}: {e}") from None
        self.server = srv
        self._slots = []
        for url in srv.base_urls:
            slot = OpenAIProvider(self.cfg.model_copy(update={"base_url": url, "model": "local",
                                                             "max_connections": 1, "api_key_env": None}))
            await slot.start()
            self._slots.append(slot)
        self._busy = [0] * len(self._slots)

    async def close(self) -> None:
        for slot in self._slots:
            await slot.close()
        self._slots = []
        self._busy = []
        if self.server is not None:
            srv, self.server = self.server, None
            release(srv)

    # ------------------------------------------------------------------ requests

    def identity(self) -> dict[str, Any]:
        """What changes the answers: the file's content, the chat format and the window (not
        the port, the slots or the threads)."""
        return {"provider": "local", "model": self.gguf.name, "gguf": self._fingerprint,
                "n_ctx": self.spec.n_ctx, "chat_format": self.spec.chat_format}

    def encode(self, messages: list[Message], root: Path | None, system: str | None = None) -> Any:
        return encode_openai_messages(messages, root, system)

    async def complete(self, payload: Any, params: dict[str, Any], timeout_s: float) -> ChatResult:
        if not self._slots:
            await self.start()
        i = min(range(len(self._slots)), key=self._busy.__getitem__)  # the least busy slot
        self._busy[i] += 1
        try:
            res = await self._slots[i].complete(payload, params, timeout_s)
        except ProviderError as e:
            raise self._explain(e, i) from None
        finally:
            if i < len(self._busy):
                self._busy[i] -= 1
        res.model = f"local/{self.gguf.name}"
        return res

    def _explain(self, e: ProviderError, slot: int) -> ProviderError:
        """Name the context window on overflow; say so when the server died."""
        msg = str(e)
        if e.status == 400 and ("context length" in msg or "context window" in msg):
            return ProviderError(f"the prompt does not fit the model's context window of {self.spec.n_ctx} tokens "
                                 f"(server option n_ctx): {msg}", status=e.status)
        if e.status is None and self.server is not None and slot < len(self.server.procs) \
                and not self.server.procs[slot].alive():
            return ProviderError(f"the llama.cpp server for {self.gguf.name} has exited: "
                                 f"{self.server.procs[slot].failure_line()}", fatal=True)
        return e
