"""The storage interface a run needs; backends implement it."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mmsafe.types import InputError, JudgeIdentity, Response, Sample, Verdict


class StoreError(InputError):
    """The run directory holds something incompatible (another run, a newer schema)."""


DEFAULT_LEASE_S = 60.0
"""How long a claim lasts without renewal (``MMSAFE_CLAIM_LEASE_S`` overrides): a holder
renews its claims every third of it, so only a dead (or frozen) holder's claims expire."""


def ledger_from_rows(rows: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per role: calls, cached calls, errors, tokens and USD, from (role, status, n, in, out, usd) rows
    of the request log grouped by role and status (the same for every store)."""
    out: dict[str, dict[str, Any]] = {}
    for role, status, n, ti, to, c in rows:
        d = out.setdefault(role, {"calls": 0, "cached": 0, "errors": 0, "input_tokens": 0,
                                  "output_tokens": 0, "cost_usd": 0.0})
        if status == "cached":
            d["cached"] += n
        else:
            d["calls"] += n
            if status == "error":
                d["errors"] += n
        d["input_tokens"] += ti or 0
        d["output_tokens"] += to or 0
        d["cost_usd"] = round(d["cost_usd"] + (c or 0.0), 6)
    return out


def lease_seconds() -> float:
    """The claim lease: ``MMSAFE_CLAIM_LEASE_S`` when set to a positive number, else 60 s."""
    raw = os.environ.get("MMSAFE_CLAIM_LEASE_S")
    if raw:
        try:
            v = float(raw)
        except ValueError:
            raise StoreError(f"MMSAFE_CLAIM_LEASE_S={raw!r}: expected a number of seconds") from None
        if v > 0:
            return v
        raise StoreError(f"MMSAFE_CLAIM_LEASE_S={raw!r}: must be positive")
    return DEFAULT_LEASE_S


@dataclass(frozen=True)
class Claim:
    """The answer to :meth:`RunStore.claim`.

    - ``claimed``: this process now holds the sample; ``response_ok`` / ``judged`` say what
      is already stored for it (a holder that died may have saved the reply, not the verdict).
    - ``held``: another live process holds it (``holder`` names it: ``host:pid:token``).
    - ``finished``: another process worked on it after this one started: it is not sent
      again by this process (a failure is retried by the next run, as in one process).
    """

    outcome: Literal["claimed", "held", "finished"]
    response_ok: bool = False
    judged: bool = False
    holder: str | None = None


@dataclass(frozen=True)
class Holder:
    """Who claims: this host and process, plus a token (a pid can be reused)."""

    host: str
    pid: int
    token: str

    @property
    def id(self) -> str:
        """``host:pid:token``, as stored with each claim."""
        return f"{self.host}:{self.pid}:{self.token}"

    @staticmethod
    def here() -> Holder:
        """The current process."""
        return Holder(this_host(), os.getpid(), uuid.uuid4().hex[:12])


@functools.cache
def this_host() -> str:
    """This machine and process namespace: the host name, plus (on Linux) a short hash of the
    boot id and the pid namespace, so two containers sharing a host name (``--network host``)
    never take each other's pids for their own."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot_id" in path else os.readlink(path))
        except OSError:
            pass
    suffix = hashlib.sha256("|".join(parts).encode()).hexdigest()[:8] if parts else ""
    return socket.gethostname() + (f"/{suffix}" if suffix else "")


def holder_dead(host: str | None, pid: int | None) -> bool:
    """A holder on this host whose process is gone (its claims need not wait for the lease)."""
    if host != this_host() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


ClaimRow = tuple[str, str | None, int | None, float, float | None]
"""A stored claim: (holder, host, pid, expires, done_at)."""


def decide_claim(row: ClaimRow | None, me: str, now: float, started: float) -> Literal["claimed", "held", "finished"]:
    """The claim rule both stores apply (inside one transaction, the row locked):
    a free sample, one finished before this process started (a re-run retries a failure),
    one of ours, one whose lease expired or whose holder is gone -> claimed; one finished
    by another process since this one started -> finished; else held."""
    if row is None:
        return "claimed"
    holder, host, pid, expires, done_at = row
    if done_at is not None:
        return "finished" if done_at >= started else "claimed"
    if holder == me or expires < now or holder_dead(host, pid):
        return "claimed"
    return "held"


class RunStore(ABC):
    """Where a run keeps its responses, verdicts, judges and request log (one run directory).

    A rerun reads it to skip finished work; summaries, reports and exports read it back.
    Several processes may work on one run at once: each claims a sample (:meth:`claim`)
    before sending it, so it is sent by one of them only.
    """

    @abstractmethod
    def get_meta(self, key: str) -> Any | None:
        """The stored value for ``key`` (JSON-decoded), or None when unset."""

    @abstractmethod
    def set_meta(self, key: str, value: Any) -> None:
        """Store ``value`` (JSON-encodable) under ``key``, replacing any earlier value."""

    @abstractmethod
    def ok_sample_ids(self) -> set[str]:
        """Samples whose target response is stored and successful."""

    @abstractmethod
    def judged_sample_ids(self, judge_id: str) -> set[str]:
        """Samples with a (non-error) verdict from this judge."""

    @abstractmethod
    def save_response(self, sample: Sample, response: Response, requests: list[dict[str, Any]]) -> None:
        """Store a target response with its request log. An ``ok`` response is final;
        an error response may be replaced by a later success, never the reverse."""

    @abstractmethod
    def register_judge(self, identity: JudgeIdentity) -> str:
        """Record a judge's identity (idempotent) and return its judge id."""

    @abstractmethod
    def save_verdict(self, verdict: Verdict, requests: list[dict[str, Any]]) -> None:
        """Store a judge's verdict on a sample (replacing an earlier one) with its request log."""

    @abstractmethod
    def log_requests(self, requests: list[dict[str, Any]]) -> None:
        """Append entries to the request log (calls, tokens, USD, errors) outside a response or verdict."""

    @abstractmethod
    def get_response(self, sample_id: str) -> Response | None:
        """The stored target response for a sample, or None."""

    @abstractmethod
    def iter_rows(self, judge_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream one row per stored sample (response fields + the judge's verdict), in order."""

    @abstractmethod
    def judges(self) -> list[dict[str, Any]]:
        """Every registered judge: ``judge_id``, ``identity`` and ``created``, oldest first."""

    @abstractmethod
    def ledger(self) -> dict[str, dict[str, Any]]:
        """Calls, tokens and USD per role, from the request log."""

    @abstractmethod
    def iter_verdict_labels(self) -> Iterator[tuple[str, str, str]]:
        """(sample_id, judge_id, label) for every stored verdict of a non-control sample."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Stored responses: ``responses``, ``ok`` and ``errors``."""

    async def durable(self) -> None:
        """Return once every write made so far is committed. A store that commits each write as it
        is made (SQLite) returns at once; one that commits in the background (PostgreSQL) makes the
        caller wait for it without blocking the event loop, so a sample counts as done only once
        it is stored and a SIGKILL re-sends at most the samples being worked on."""
        return None

    # -- claims: several processes on one run
    @abstractmethod
    def begin_claims(self, lease_s: float | None = None) -> Holder:
        """Start claiming as this process (the lease defaults to :func:`lease_seconds`)."""

    def claim(self, sample_id: str, judge_id: str) -> Claim:
        """Claim one sample, atomically (see :func:`decide_claim`); a ``claimed`` answer says
        what is already stored for it."""
        return self.claim_many([sample_id], judge_id)[sample_id]

    @abstractmethod
    def claim_many(self, sample_ids: list[str], judge_id: str) -> dict[str, Claim]:
        """:meth:`claim` for several samples in one go (one transaction, one round trip)."""

    @abstractmethod
    def finish_claim(self, sample_id: str) -> None:
        """This process is done with the sample (its reply and verdict, or its failure, are stored)."""

    @abstractmethod
    def renew_claims(self) -> int:
        """Extend the lease of every unfinished claim this process holds; returns how many."""

    @abstractmethod
    def release_claims(self) -> None:
        """Give up the unfinished claims of this process (stopped early): others may take them at once."""

    # -- copying between stores (mmsafe store copy)
    @abstractmethod
    def dump_tables(self) -> Iterator[tuple[str, list[str], Iterator[tuple[Any, ...]]]]:
        """(table, columns, rows) of every table, from one consistent snapshot; each table's
        rows must be consumed before the next table is asked for."""

    @abstractmethod
    def load_table(self, table: str, cols: list[str], rows: Iterable[tuple[Any, ...]]) -> int:
        """Append ``rows`` (as :meth:`dump_tables` gives them) to ``table``; returns how many."""

    @abstractmethod
    def close(self) -> None:
        """Release the store (a closed store cannot be used again)."""
