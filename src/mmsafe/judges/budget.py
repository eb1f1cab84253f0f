"""Token budgets for judge prompts: how many output tokens each judge kind asks for, a cheap
token estimate, and cutting long replies and dialogues so that prompt + ``max_tokens`` fits
the judge model's context window.

Why: a small local judge (llama.cpp, 2,048-token context) failed with a context overflow on a
long reply — ~520 tokens of rubric instructions, the dialogue, a ~1,000-token reply and the
old default ``max_tokens`` of 1,024 do not fit. A verdict needs far fewer output tokens
(:data:`OUTPUT_TOKENS`), and a long reply keeps its start and its end with a visible marker in
between (:func:`cut_middle`).

Token counting is an *estimate*, not a tokenizer (none is known for an arbitrary endpoint):
ASCII text at 4 characters per token, every other character (CJK, emoji, accented letters) as
one token each, then 15 % added as a safety margin, plus a few tokens per message for the chat
template. On English text this over-counts real BPE tokenizers (Llama 3, GPT-4o, Qwen) by
roughly 10–25 %, which is the side to err on: a prompt that is estimated to fit does fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmsafe.models.base import ConfigError

CHARS_PER_TOKEN = 4.0  # ASCII characters per token (BPE tokenizers on English text: 3.6–4.5)
SAFETY_MARGIN = 1.15  # the estimate is multiplied by this
MESSAGE_OVERHEAD = 8  # chat-template tokens around one message (role headers, end-of-turn)
IMAGE_TOKENS = 1_600  # an attached image, counted against the window (Llama 4 / Qwen-VL tiles: ~600–1,600)
MIN_SLOT_TOKENS = 64  # a reply or dialogue is never cut below this

# Output tokens per judge kind: what its answer format needs, measured on the scripted replies
# (tests/test_prompt_budget.py) and sized ~3x that, so a model that adds a sentence still finishes.
# A reasoning model (o-series, gpt-oss, DeepSeek-R1) spends hidden reasoning tokens inside
# max_tokens: give it more with ?max_tokens=N or the models file's params.
OUTPUT_TOKENS: dict[str, int] = {
    "rubric": 256,  # one JSON object with a one- or two-sentence reason: ~80 tokens
    "jury": 320,  # assess / deliberate: JSON with two or three sentences of reasoning: ~110 tokens
    "jury_foreperson": 320,  # a summary of at most four sentences: ~120 tokens
    "llama-guard-3": 20,  # "unsafe\nS1,S10": 4–12 tokens (20, as before: the default guard's identity is kept)
    "llama-guard-4": 20,
    "shieldgemma": 8,  # the first token is "Yes" or "No"; the explanation that follows is not needed
    "wildguard": 48,  # three "Name: yes|no" lines: ~16-20 tokens
    "qwen3guard": 64,  # Safety / Categories / Refusal lines: ~15–40 tokens
    "gpt-oss-safeguard": 1_024,  # a reasoning model: its hidden reasoning counts against max_tokens
}


def estimate_tokens(text: str | None) -> int:
    """A cheap upper-leaning token estimate of ``text`` (see the module docstring)."""
    if not text:
        return 0
    # counted in C: a per-character generator cost ~1 ms per judged reply (2 s of CPU per 2,000-sample run)
    n_ascii = len(text) if text.isascii() else len(text.encode("ascii", "ignore"))
    other = len(text) - n_ascii
    return math.ceil((n_ascii / CHARS_PER_TOKEN + other) * SAFETY_MARGIN)


def chars_for_tokens(text: str, tokens: int) -> int:
    """How many characters of ``text`` fit in about ``tokens`` estimated tokens (its own mix of scripts)."""
    est = estimate_tokens(text)
    if est <= tokens:
        return len(text)
    return max(0, int(len(text) * tokens / est))


def marker(cut_chars: int, cut_tokens: int, what: str) -> str:
    """The visible note left where text was cut."""
    return (f"\n[… {cut_chars:,} characters (~{cut_tokens:,} tokens) of the {what} cut here by mmsafe to fit "
            f"the judge's token budget; its start and end are kept …]\n")


def cut_middle(text: str, max_tokens: int, what: str = "reply") -> tuple[str, int]:
    """Keep the start and the end of ``text`` within ``max_tokens`` (estimated), with a visible
    marker in between -> (text, characters cut). Text that fits is returned unchanged.

    The start gets 60 % of what is kept (a reply's opening says whether it complies or refuses),
    the end 40 % (where a long answer often lands its payload or its disclaimer)."""
    if max_tokens < 1 or estimate_tokens(text) <= max_tokens:
        return text, 0
    probe = marker(len(text), estimate_tokens(text), what)
    keep_tokens = max(1, max_tokens - estimate_tokens(probe))
    keep = chars_for_tokens(text, keep_tokens)
    head_n = int(keep * 0.6)
    tail_n = keep - head_n
    head = text[:head_n]
    tail = text[len(text) - tail_n:] if tail_n else ""
    # cut at whitespace where one is near, so no word is split
    sp = head.rfind(" ", max(0, head_n - 40))
    if sp > 0:
        head = head[:sp]
    sp = tail.find(" ", 0, 40)
    if sp >= 0:
        tail = tail[sp + 1:]
    cut = len(text) - len(head) - len(tail)
    return head + marker(cut, estimate_tokens(text[len(head):len(text) - len(tail)]), what) + tail, cut


@dataclass
class Fit:
    """What :func:`fit_slots` did: the texts to insert and what was cut."""

    reply: str
    dialogue: str
    reply_cut_chars: int = 0
    dialogue_cut_chars: int = 0
    prompt_tokens: int = 0  # estimated tokens of the whole prompt after cutting

    @property
    def cut(self) -> bool:
        return bool(self.reply_cut_chars or self.dialogue_cut_chars)

    def note(self) -> dict[str, int]:
        """For ``Verdict.extra['truncated']``: characters cut from each, only when something was."""
        out = {}
        if self.reply_cut_chars:
            out["reply_chars_cut"] = self.reply_cut_chars
        if self.dialogue_cut_chars:
            out["dialogue_chars_cut"] = self.dialogue_cut_chars
        return out


@dataclass
class Budget:
    """A judge's token budget: the model's context window (None = unknown), the output tokens it
    asks for, and caps on the reply and the dialogue that apply even with a large window."""

    context_window: int | None
    max_tokens: int
    reply_tokens: int = 4_000
    dialogue_tokens: int = 4_000

    def available(self, fixed_tokens: int, images: int = 0) -> int | None:
        """Tokens left for the reply and the dialogue once the fixed prompt text, attached images
        and the output are counted; None when the window is unknown."""
        if self.context_window is None:
            return None
        return self.context_window - self.max_tokens - fixed_tokens - images * IMAGE_TOKENS

    def check_fits(self, fixed_tokens: int, spec: str, images: int = 0) -> None:
        """ConfigError when not even the instructions, the output and two minimal slots fit the window."""
        left = self.available(fixed_tokens, images)
        if left is not None and left < 2 * MIN_SLOT_TOKENS:
            raise ConfigError(
                f"judge spec {spec!r}: the judge model's context window of {self.context_window} tokens cannot hold "
                f"its instructions (~{fixed_tokens} tokens, estimated) plus max_tokens={self.max_tokens} and a "
                f"minimal reply: lower max_tokens, use a shorter template, or a model with a larger window "
                f"(context_window / n_ctx)")

    def fit(self, fixed_tokens: int, reply: str, dialogue: str, images: int = 0) -> Fit:
        """Cut the reply and the dialogue (middle out) so the prompt fits: each first to its cap, then,
        when the window is known and still too small, both further — the reply keeps at least half
        of what is left (it is what is judged), the dialogue takes what the reply does not need."""
        r_need, d_need = estimate_tokens(reply), estimate_tokens(dialogue)
        r_cap, d_cap = min(r_need, self.reply_tokens), min(d_need, self.dialogue_tokens)
        left = self.available(fixed_tokens, images)
        if left is not None and r_cap + d_cap > left:
            left = max(left, 2 * MIN_SLOT_TOKENS)
            r_cap = min(r_cap, max(left // 2, left - d_cap), left - min(d_cap, MIN_SLOT_TOKENS))
            r_cap = max(r_cap, MIN_SLOT_TOKENS)
            d_cap = max(min(d_cap, left - r_cap), min(d_need, MIN_SLOT_TOKENS))
        new_reply, rc = cut_middle(reply, r_cap, "reply") if r_need > r_cap else (reply, 0)
        new_dialogue, dc = cut_middle(dialogue, d_cap, "conversation") if d_need > d_cap else (dialogue, 0)
        total = fixed_tokens + estimate_tokens(new_reply) + estimate_tokens(new_dialogue) + images * IMAGE_TOKENS
        return Fit(new_reply, new_dialogue, rc, dc, total)


def output_tokens(kind: str) -> int:
    """The default ``max_tokens`` of a judge kind (or guard format)."""
    return OUTPUT_TOKENS[kind]
