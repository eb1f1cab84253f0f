"""The storage interface a run needs; backends implement it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from mmsafe.types import InputError, JudgeIdentity, Response, Sample, Verdict


class StoreError(InputError):
    """The run directory holds something incompatible (another run, a newer schema)."""


class RunStore(ABC):
    """Where a run keeps its responses, verdicts, judges and request log (one run directory).

    A rerun reads it to skip finished work; summaries, reports and exports read it back.
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
    def close(self) -> None:
        """Release the store (a closed store cannot be used again)."""
