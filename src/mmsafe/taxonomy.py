"""The default risk taxonomy (SafeBench x SafeMT, with aliases) and scenario-name mapping.

A leaf module: it imports only the standard library and PyYAML.

>>> resolve_scenario("01-Illegal_Activitiy")
'illegal_activities'
>>> resolve_scenario("Health Consultation")
'medical_advice'
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MLCOMMONS_HAZARDS",
    "RUBRICS",
    "default_taxonomy_path",
    "load_taxonomy",
    "normalize_name",
    "resolve_scenario",
    "scenario",
    "scenario_ids",
]

RUBRICS = ("default", "political", "professional_advice")
MLCOMMONS_HAZARDS = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
}

_PREFIX = re.compile(r"^\s*\d+\s*[-_.:)]\s*")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize_name(name: str) -> str:
    """Key used for matching: lower case, "&" as "and", a leading "01-" dropped,
    everything but letters and digits removed ("Hate_Speech" == "hate speech" == "HateSpeech")."""
    s = _PREFIX.sub("", str(name)).lower().replace("&", " and ")
    return _NON_ALNUM.sub("", s)


def default_taxonomy_path() -> Path:
    """The bundled taxonomy file (``mmsafe/data/taxonomy.yaml``)."""
    return Path(str(resources.files("mmsafe").joinpath("data/taxonomy.yaml")))


def _validate(tax: dict[str, Any], where: str) -> None:
    if not isinstance(tax, dict) or not isinstance(tax.get("scenarios"), list):
        raise ValueError(f"{where}: a taxonomy needs a 'scenarios' list")
    cats = {c["id"] for c in tax.get("categories", []) if isinstance(c, dict) and "id" in c}
    seen: set[str] = set()
    for s in tax["scenarios"]:
        if not isinstance(s, dict) or not s.get("id"):
            raise ValueError(f"{where}: scenario without an id: {s!r}")
        sid = s["id"]
        if sid in seen:
            raise ValueError(f"{where}: duplicate scenario id {sid!r}")
        seen.add(sid)
        if cats and s.get("category") not in cats:
            raise ValueError(f"{where}: scenario {sid!r} has unknown category {s.get('category')!r}")
        bad = [c for c in s.get("mlcommons", []) or [] if c not in MLCOMMONS_HAZARDS]
        if bad:
            raise ValueError(f"{where}: scenario {sid!r} has unknown MLCommons codes {bad}")
        if s.get("rubric", "default") not in RUBRICS:
            raise ValueError(f"{where}: scenario {sid!r} has unknown rubric {s.get('rubric')!r}")


@lru_cache(maxsize=8)
def _load_cached(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        tax = yaml.safe_load(f)
    _validate(tax, path)
    return tax


def load_taxonomy(path: str | Path | None = None) -> dict[str, Any]:
    """Load and validate a taxonomy YAML (the bundled default when ``path`` is None).

    Returns the parsed mapping (``name, version, sources, categories, scenarios, ...``);
    each scenario has ``id, name, category, description, aliases, mlcommons, rubric``.
    The result is cached per path; treat it as read-only (copy before mutating).
    """
    return _load_cached(_resolved(path))


@lru_cache(maxsize=8)
def _alias_index(path: str) -> dict[str, str]:
    tax = _load_cached(path)
    index: dict[str, str] = {}
    for s in tax["scenarios"]:
        for n in [s["id"], s.get("name", ""), *(s.get("aliases") or [])]:
            k = normalize_name(n)
            if not k:
                continue
            other = index.setdefault(k, s["id"])
            if other != s["id"]:
                raise ValueError(f"{path}: name {n!r} is an alias of both {other!r} and {s['id']!r}")
    return index


def resolve_scenario(name: str | None, path: str | Path | None = None) -> str | None:
    """Map a scenario string from any importer (id, name or alias; case-, space- and
    punctuation-insensitive, "01-" prefix ignored) to a scenario id, or None if unknown."""
    if name is None:
        return None
    return _resolve_cached(name, _resolved(path))


@lru_cache(maxsize=4096)
def _resolve_cached(name: str, path: str) -> str | None:
    return _alias_index(path).get(normalize_name(name))


def _resolved(path: str | Path | None) -> str:
    """Absolute path of a taxonomy file (the default one resolved once)."""
    if path is None:
        return _default_resolved()
    return str(Path(path).resolve())


@lru_cache(maxsize=1)
def _default_resolved() -> str:
    return str(Path(default_taxonomy_path()).resolve())


def scenario(scenario_id: str, path: str | Path | None = None) -> dict[str, Any] | None:
    """The scenario record for an id or any alias, or None."""
    sid = resolve_scenario(scenario_id, path)
    if sid is None:
        return None
    return _by_id(_resolved(path)).get(sid)


@lru_cache(maxsize=8)
def _by_id(path: str) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in _load_cached(path)["scenarios"]}


def scenario_ids(path: str | Path | None = None) -> list[str]:
    """The taxonomy's scenario ids, in file order (the bundled taxonomy by default)."""
    return [s["id"] for s in load_taxonomy(path)["scenarios"]]
