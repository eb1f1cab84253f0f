"""The judge interface: (sample, conversation, response) -> Verdict.

An unparsable or failed judgment is ``unscored`` — never ``safe``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from mmsafe.types import JudgeIdentity, Response, Sample, Verdict


class Judge(ABC):
    """A judge has an identity (kind, models, prompt hash, settings) and judges one reply."""

    identity: JudgeIdentity
    """Set by the judge; a plugin that leaves it unset gets one from its registered name and options."""

    @property
    def judge_id(self) -> str:
        """The judge's id: a hash of its identity (kind, models, prompt hash, settings)."""
        return self.identity.id

    async def start(self) -> None:
        """Open what the judge needs before its first call (connections, models); a no-op by default."""
        return None

    async def close(self) -> None:
        """Release what ``start`` opened; a no-op by default."""
        return None

    @abstractmethod
    async def judge(self, sample: Sample, response: Response,
                    root: Path | None = None) -> tuple[Verdict, list[dict[str, Any]]]:
        """Return the verdict and the request-log rows of the calls it made."""

    async def judge_many(self, items: list[tuple[Sample, Response]], root: Path | None = None,
                         concurrency: int = 16) -> list[tuple[Verdict, list[dict[str, Any]]]]:
        """Judge many (sample, response) pairs, at most ``concurrency`` at a time, in order."""
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(s: Sample, r: Response) -> tuple[Verdict, list[dict[str, Any]]]:
            async with sem:
                return await self.judge(s, r, root)

        return list(await asyncio.gather(*(one(s, r) for s, r in items)))
