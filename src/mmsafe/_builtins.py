"""mmsafe's own plugins, registered through the same :class:`~mmsafe.registry.Registry` as
third-party ones. Targets are ``"module:attr"`` strings, so listing them imports nothing.

Protocols (what a registered object of each kind must be; ``docs/extending.md`` has a
worked example):

- providers: a :class:`~mmsafe.models.Provider` subclass, built as ``cls(endpoint_config)``;
  ``default_capabilities`` (a class attribute or ``capabilities=`` here) says what it takes.
- judges, defenses: a class or function with ``from_spec(arg, options, *, spec, models_file, …)``,
  or one built from the spec's ``?key=value`` options as keyword arguments (``model=`` gets
  the part after ``name:``).
- importers: ``fn(src, out, *, name=None, overwrite=False, **options) -> BenchmarkManifest``.
- exporters: ``of="runs"``: ``fn(runs, fh, *, judge_id=None, csv_formula_guard=True) -> rows``
  (``binary=True`` when it writes bytes); ``of="benchmark"``: ``fn(bench, out, **options)``.
- attacks: ``type=`` text (``fn(text, *, seed=0) -> str``), text-llm, visual
  (``fn(*, text, instruction, image, seed, options) -> VisualResult``), dialogue-method
  (a string of generator instructions) or adaptive (an attacker class).
- executors: ``type="mode"`` run modes (how a sample's conversation is driven).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmsafe.registry import Registry


def _providers(r: Registry) -> None:
    from mmsafe.models.base import Capabilities

    r.add("openai", "mmsafe.models.openai_compat:OpenAIProvider",
          description="any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, LM Studio, TGI, OpenRouter)",
          options=("base_url", "api_key_env", "params"), capabilities=Capabilities(image=True, audio=False))
    r.add("mock", "mmsafe.models.mock:MockProvider",
          description="reference mock models (refuser, complier, echo, mixed) on a loopback server; labelled MOCK",
          capabilities=Capabilities(image=True, audio=True))
    r.add("anthropic", "mmsafe.models.anthropic_provider:AnthropicProvider",
          description="Anthropic Messages API (extra: anthropic)", options=("api_key_env", "params"),
          capabilities=Capabilities(image=True, audio=False), extra="anthropic")
    r.add("google", "mmsafe.models.google_provider:GoogleProvider",
          description="Google Gemini API (extra: google)", options=("api_key_env", "params"),
          capabilities=Capabilities(image=True, audio=True), extra="google")
    r.add("hf", "mmsafe.models.hf_provider:HFProvider",
          description="a local Hugging Face transformers model by path (extra: hf)", options=("device", "dtype"),
          capabilities=Capabilities(image=True, audio=False, editable_history=True), extra="hf")
    r.add("local", "mmsafe.models.local_provider:LocalProvider",
          description="a local GGUF file served by llama.cpp, started and stopped by mmsafe (local/PATH.gguf; "
                      "extra: local)", options=("n_ctx", "slots", "n_threads", "n_batch", "chat_format",
                                                "startup_timeout_s"),
          capabilities=Capabilities(image=False, audio=False, editable_history=True), extra="local")


def _judges(r: Registry) -> None:
    r.add("keyword", "mmsafe.judges.keyword:KeywordJudge",
          description="refusal-phrase baseline (no model)", options=("window",))
    r.add("rubric", "mmsafe.judges.rubric:RubricJudge",
          description="one LLM judge with a rubric (rubric:MODEL)",
          options=("template", "rubrics", "rubric", "images", "temperature", "max_tokens", "context_window",
                   "reply_tokens", "dialogue_tokens"))
    r.add("jury", "mmsafe.judges.jury:JuryJudge",
          description="a jury of LLMs that deliberates (jury:M1[,M2…])",
          options=("n", "rounds", "rule", "threshold", "early_exit", "foreperson", "rubric"))
    r.add("guard", "mmsafe.judges.guard:GuardJudge",
          description="a guard model: Llama Guard 3/4, ShieldGemma, WildGuard, Qwen3Guard, gpt-oss-safeguard "
                      "(guard:MODEL?format=…)",
          options=("format", "send", "categories", "template", "images", "policies", "policy", "logprobs",
                   "threshold", "controversial", "max_tokens", "context_window", "reply_tokens", "dialogue_tokens"))
    r.add("offline", "mmsafe.judges.offline:OfflineJudge",
          description="CPU-only classifier with shipped weights (no API calls)",
          options=("weights", "threshold", "abstain"))
    r.add("cascade", "mmsafe.judges.cascade:CascadeJudge",
          description="cheap judges first: cascade:offline>rubric:MODEL (each stage decides when confident)")


def _defenses(r: Registry) -> None:
    r.add("moderator", "mmsafe.defense.defenses:ModeratorDefense",
          description="dialogue safety moderator (moderator:offline | moderator:llm:MODEL | moderator:guard:MODEL)",
          options=("mode", "on_error"))
    r.add("input-guard", "mmsafe.defense.defenses:InputGuardDefense",
          description="a guard model screens the conversation before the target sees it", options=("on_error",))
    r.add("output-guard", "mmsafe.defense.defenses:OutputGuardDefense",
          description="a guard model screens the target's reply")
    r.add("keyword-filter", "mmsafe.defense.defenses:KeywordFilterDefense",
          description="blocks requests containing blocklisted words (baseline)")
    r.add("system-prompt", "mmsafe.defense.defenses:SystemPromptDefense",
          description="adds a safety system prompt", options=("text",))
    # moderator backends (the BACKEND of moderator:BACKEND, serve-guard --moderator, mmsafe moderate)
    r.add("moderator.offline", "mmsafe.defense.moderator:OfflineModerator", role="moderator",
          description="offline[:tfidf|minilm|auto][:THRESHOLD] — CPU classifier, no API calls")
    r.add("moderator.llm", "mmsafe.defense.moderator:LLMModerator", role="moderator",
          description="llm:MODEL — an LLM reads the whole conversation")
    r.add("moderator.guard", "mmsafe.defense.moderator:GuardModerator", role="moderator",
          description="guard:MODEL — a guard model (Llama Guard style) reads the conversation")
    r.add("moderator.cascade", "mmsafe.defense.cascade:CascadeModerator", role="moderator",
          description="cascade:offline>guard:MODEL — offline decides the clear cases, the next stage the rest")


def _importers(r: Registry) -> None:
    base = "mmsafe.datasets.importers"
    for name, fn, desc in (
        ("safemt", "safemt:import_safemt", "SafeMT N_turn.json files (multi-turn, image)"),
        ("safebench", "safebench:import_safebench", "SafeBench (Ying et al.) release: text, image, audio"),
        ("figstep", "figstep:import_figstep", "FigStep / SafeBench-Tiny CSV + typographic images"),
        ("mmsafetybench", "mmsafetybench:import_mmsafetybench", "MM-SafetyBench question JSON + images"),
        ("harmbench", "harmbench:import_harmbench", "HarmBench behaviour CSV (text and multimodal)"),
        ("jbb", "harmbench:import_jbb", "JailbreakBench harmful/benign behaviours CSV"),
        ("csv", "generic:import_csv", "any CSV with a column mapping"),
        ("jsonl", "generic:import_jsonl", "any JSONL with a field mapping"),
        ("jailbreakv", "jailbreakv:import_jailbreakv", "JailBreakV-28K CSVs + image folders (or RedTeam-2K)"),
        ("siuo", "siuo:import_siuo", "SIUO siuo_gen.json + images (safe inputs, unsafe output)"),
        ("mossbench", "mossbench:import_mossbench", "MOSSBench over-sensitivity: benign controls + contrast set"),
        ("vlsbench", "vlsbench:import_vlsbench", "VLSBench data.json + imgs/"),
        ("mssbench", "mssbench:import_mssbench", "MSSBench chat/embodied: safe-image controls, unsafe-image items"),
        ("vlguard", "vlguard:import_vlguard", "VLGuard test.json: safe_safes controls, safe_unsafes, unsafes"),
        ("mlvlsu", "mlvlsu:import_mlvlsu", "ML-VLSU VLSU.csv with locally downloaded images (never fetched)"),
        ("audio-folder", "audio_folder:import_audio_folder", "audio files named <Category>_<n> (garak audio_achilles)"),
    ):
        r.add(name, f"{base}.{fn}", description=desc)


def _exporters(r: Registry) -> None:
    rep = "mmsafe.report.export"
    r.add("csv", f"{rep}:write_csv", of="runs", binary=False, description="one row per sample (CSV)")
    r.add("jsonl", f"{rep}:write_jsonl", of="runs", binary=True, description="one JSON object per sample")
    r.add("parquet", f"{rep}:write_parquet", of="runs", binary=True, description="one row per sample (Parquet)")
    r.add("markdown", f"{rep}:leaderboard_markdown", of="leaderboard", description="the runs' leaderboard (Markdown)")
    ds = "mmsafe.datasets.exporters"
    r.add("benchmark-jsonl", f"{ds}:export_jsonl", of="benchmark",
          description="a benchmark as OpenAI-format JSONL (images as paths)")
    r.add("benchmark-parquet", f"{ds}:export_parquet", of="benchmark", description="a benchmark as Parquet")
    r.add("hf", f"{ds}:export_hf", of="benchmark", description="a benchmark as a Hugging Face datasets folder")
    r.add("safemt", f"{ds}:export_safemt", of="benchmark", description="a benchmark in SafeMT's N_turn.json format")


def _attacks(r: Registry) -> None:
    from mmsafe.attacks.registry_entries import register_attacks
    register_attacks(r)


def _executors(r: Registry) -> None:
    r.add("fixed", "mmsafe.runner.base:FIXED_MODE", type="mode",
          description="send the pre-written history; the target writes the last reply")
    r.add("live", "mmsafe.runner.base:LIVE_MODE", type="mode",
          description="the target answers every user turn itself; each turn judged")
    r.add("adaptive", "mmsafe.runner.base:ADAPTIVE_MODE", type="mode",
          description="an attacker LLM drives the conversation (needs --attacker)")
    r.add("batch", "mmsafe.runner.batch:run_batch", type="executor",
          description="--batch: fixed-mode replies through the OpenAI / Anthropic batch APIs at batch prices")
    r.add("ray", "mmsafe.runner.ray_exec:drive_run", type="executor",
          description="--executor ray: shards of a run on a Ray cluster (mmsafe[ray])")


_TABLES = {"providers": _providers, "judges": _judges, "defenses": _defenses, "importers": _importers,
           "exporters": _exporters, "attacks": _attacks, "executors": _executors}


def register_builtins(reg: Registry) -> None:
    """Add mmsafe's own entries of ``reg.kind`` to ``reg``."""
    _TABLES[reg.kind](reg)
