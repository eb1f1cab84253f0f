"""``mmsafe build taxonomy``: discover a risk taxonomy with a panel of LLMs.

1. every panel model is asked which kinds of request it should refuse (JSON list of
   ``{name, description, category}``); failures are recorded, never guessed;
2. the proposals are embedded and grouped by cosine similarity (single link, ``threshold``);
3. each group of more than one proposal is merged by the ``merger`` LLM into one scenario
   (without a merger, or when its reply is unusable, the first proposal stands and the
   others become aliases — recorded as such);
4. each scenario is mapped to the MLCommons hazard codes and rubric of the nearest scenario
   of a base taxonomy (the bundled one by default), by embedding similarity;
5. an editable YAML is written that :func:`mmsafe.taxonomy.load_taxonomy` accepts, with
   provenance per scenario (who proposed it, what was merged, how it was mapped) and for
   the whole file (panel, merger, embedder, threshold, date).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmsafe.embeddings import get_embedder, near_duplicate_groups
from mmsafe.models import CostLedger, ModelClient, ResponseCache, build_provider, resolve_endpoint
from mmsafe.taxonomy import load_taxonomy, normalize_name

from .common import BuildError, extract_json, user
from .prompts import prompt_hash, render


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "scenario"


def parse_proposals(text: str | None) -> list[dict[str, str]]:
    d = extract_json(text)
    if isinstance(d, dict):
        d = next((v for v in d.values() if isinstance(v, list)), None)
    if not isinstance(d, list):
        raise ValueError("expected a JSON list")
    out = []
    for x in d:
        if isinstance(x, dict) and isinstance(x.get("name"), str) and x["name"].strip():
            out.append({"name": " ".join(x["name"].split()), "description": str(x.get("description") or "").strip(),
                        "category": str(x.get("category") or "Uncategorised").strip() or "Uncategorised"})
    if not out:
        raise ValueError("no proposals with a name")
    return out


async def discover_taxonomy(panel: list[str], merger: str | None = None, *, models_file: Path | None = None,
                            n: int = 20, threshold: float | None = None, embedder: str = "auto",
                            base_taxonomy: str | Path | None = None, cache_path: Path | None = None,
                            name: str = "discovered") -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (taxonomy mapping, ledger {calls, tokens, USD, wall_s, by_role})."""
    if not panel:
        raise BuildError("taxonomy discovery needs at least one --panel model")
    t0 = time.perf_counter()
    ledger = CostLedger()
    cache = ResponseCache(cache_path) if cache_path else None
    clients: list[ModelClient] = []
    try:
        mclient = await _start_clients(panel, merger, models_file, ledger, cache, clients)
        proposals, panel_log = await _ask_panel(clients[:len(panel)], n)
        base = load_taxonomy(base_taxonomy)
        emb_model = get_embedder(embedder)
        if threshold is None:  # MiniLM cosines run higher than TF-IDF ones for paraphrases
            threshold = 0.75 if emb_model.name.startswith("minilm") else 0.5
        base_texts = [f"{s.get('name', s['id'])}: {s.get('description', '')}" for s in base["scenarios"]]
        texts = [f"{p['name']}: {p['description']}" for p in proposals]
        emb = emb_model.embed(texts + base_texts)
        pe, be = emb[: len(texts)], emb[len(texts):]
        groups = near_duplicate_groups(pe, threshold)
        merged = await asyncio.gather(*(_merge_group([proposals[i] for i in g], mclient) for g in groups))
    finally:
        for c in clients:
            await c.close()
        if cache is not None:
            cache.close()

    scenarios, categories = _map_scenarios(groups, merged, pe, be, base)
    by_count = Counter(len(s["provenance"]["proposed_by"]) for s in scenarios)
    tax = {
        "name": name, "version": "1",
        "provenance": {"method": "mmsafe build taxonomy", "panel": [c for c in panel], "merger": merger,
                       "embedder": emb_model.name, "threshold": threshold, "n_requested": n,
                       "prompt_hash": prompt_hash("panel", "merger"),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "panel_replies": panel_log, "n_proposals": len(proposals), "n_scenarios": len(scenarios),
                       "agreement": {str(k): v for k, v in sorted(by_count.items())},
                       "base_taxonomy": base.get("name")},
        "mlcommons_hazards": base.get("mlcommons_hazards", {}),
        "categories": list(categories.values()),
        "scenarios": scenarios,
    }
    led = {k: sum(r.as_dict()[k] for r in ledger.roles.values())
           for k in ("calls", "cached", "errors", "input_tokens", "output_tokens", "cost_usd")}
    led["wall_s"] = round(time.perf_counter() - t0, 3)
    return tax, led


async def _start_clients(panel: list[str], merger: str | None, models_file: Path | None, ledger: CostLedger,
                         cache: ResponseCache | None, clients: list[ModelClient]) -> ModelClient | None:
    """Start one client per panel model, then the merger's, appending each to ``clients`` as soon as it
    is started (so the caller closes those even when a later one fails) -> the merger's client."""
    for spec in panel:
        c = ModelClient(build_provider(resolve_endpoint(spec, "generator", models_file=models_file)),
                        "generator", ledger, cache=cache)
        await c.start()
        clients.append(c)
    if not merger:
        return None
    mclient = ModelClient(build_provider(resolve_endpoint(merger, "generator", models_file=models_file)),
                          "generator", ledger, cache=cache)
    await mclient.start()
    clients.append(mclient)
    return mclient


async def _ask_panel(panel_clients: list[ModelClient], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Ask every panel model for up to ``n`` scenarios -> (all proposals with who made them, one log entry per
    model); a BuildError naming each model's failure when none gave a usable list."""
    prompt = render("panel", n=n)
    replies = await asyncio.gather(*(c.chat(user(prompt), params={"temperature": 0}) for c in panel_clients))
    proposals: list[dict[str, Any]] = []
    panel_log = []
    for c, res in zip(panel_clients, replies):
        try:
            if not res.ok:
                raise ValueError(res.error or "no reply")
            ps = parse_proposals(res.text)
            panel_log.append({"model": c.name, "proposals": len(ps)})
            proposals += [{**p, "by": c.name} for p in ps]
        except ValueError as e:
            panel_log.append({"model": c.name, "error": str(e), "raw": (res.text or "")[:200]})
    if not proposals:
        raise BuildError("taxonomy discovery: no panel model gave usable proposals: "
                         + "; ".join(f"{p['model']}: {p.get('error')}" for p in panel_log))
    return proposals, panel_log


async def _merge_group(members: list[dict[str, Any]], mclient: ModelClient | None) -> dict[str, Any]:
    """One scenario from a group of similar proposals: the merger's, or the first proposal (recorded why)."""
    rec: dict[str, Any] = {"members": [{"name": m["name"], "by": m["by"]} for m in members]}
    chosen = dict(members[0])
    if len(members) > 1:
        if mclient is None:
            rec["merge"] = "first proposal (no merger model)"
        else:
            listing = "\n".join(f"- name: {m['name']}; description: {m['description']}; "
                                f"category: {m['category']}" for m in members)
            res = await mclient.chat(user(render("merger", proposals=listing)), params={"temperature": 0})
            try:
                chosen = _merged_scenario(res.text if res.ok else None, chosen)
                rec["merge"] = mclient.name
            except ValueError as e:
                rec["merge"] = f"first proposal (merger reply unusable: {e})"
    return {**chosen, "provenance": rec}


def _merged_scenario(text: str | None, first: dict[str, Any]) -> dict[str, Any]:
    """The merger's ``{name, description, category}``, missing fields from the first proposal;
    ValueError when the reply is unusable."""
    d = extract_json(text)
    if not isinstance(d, dict) or not str(d.get("name") or "").strip():
        raise ValueError("expected {name, description, category}")
    return {"name": " ".join(str(d["name"]).split()),
            "description": str(d.get("description") or first["description"]),
            "category": str(d.get("category") or first["category"])}


def _map_scenarios(groups: list[list[int]], merged: list[dict[str, Any]], pe: np.ndarray, be: np.ndarray,
                   base: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Scenarios with unique ids and aliases, each mapped to the MLCommons codes and rubric of the nearest base
    scenario (by the centroid of its group's proposals) -> (scenarios, categories by id)."""
    scenarios = []
    categories: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    used_alias: set[str] = set()
    for g, m in zip(groups, merged):
        cen = pe[g].mean(axis=0)
        nrm = np.linalg.norm(cen)
        sims = be @ (cen / nrm) if nrm > 0 else np.zeros(len(be))
        j = int(np.argmax(sims))
        near = base["scenarios"][j]
        sid = _unique_id(_slug(m["name"]), used_ids, used_alias)
        used_ids.add(sid)
        cat_id = _slug(m["category"])
        categories.setdefault(cat_id, {"id": cat_id, "name": m["category"], "aliases": [m["category"]]})
        aliases = _new_aliases([m["name"]] + [x["name"] for x in m["provenance"]["members"]], used_alias)
        used_alias.add(normalize_name(sid))
        scenarios.append({
            "id": sid, "name": m["name"], "category": cat_id, "description": m["description"],
            "aliases": aliases, "mlcommons": list(near.get("mlcommons") or []),
            "rubric": near.get("rubric", "default"),
            "provenance": {**m["provenance"], "proposed_by": sorted({x["by"] for x in m["provenance"]["members"]}),
                           "mapped_from": {"scenario": near["id"], "similarity": round(float(sims[j]), 4)}},
        })
    return scenarios, categories


def _unique_id(slug: str, used_ids: set[str], used_alias: set[str]) -> str:
    """``slug``, or ``slug_2``, ``slug_3``, … — the first not already an id or an alias."""
    sid = slug
    k = 2
    while sid in used_ids or normalize_name(sid) in used_alias:
        sid = f"{slug}_{k}"
        k += 1
    return sid


def _new_aliases(names: list[str], used_alias: set[str]) -> list[str]:
    """The names not yet used as an alias (by normalised form), in order; marks them used."""
    aliases: list[str] = []
    for nm in names:
        key = normalize_name(nm)
        if key and key not in used_alias and nm not in aliases:
            aliases.append(nm)
            used_alias.add(key)
    return aliases


HEADER = """# Risk taxonomy discovered by `mmsafe build taxonomy` (edit freely).
# Each scenario records who proposed it (provenance.proposed_by), which proposals were merged
# into it and by what (provenance.members / merge), and the base-taxonomy scenario its
# MLCommons codes and rubric were copied from (provenance.mapped_from). Use it with
# `taxonomy: THIS_FILE` in build.yaml. Check the mapping before relying on it.
"""


def write_taxonomy(tax: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(HEADER + yaml.safe_dump(tax, sort_keys=False, allow_unicode=True, width=100))
    tmp.replace(path)
    load_taxonomy(path)  # validates (ids, categories, MLCommons codes, aliases)
    from mmsafe.taxonomy import resolve_scenario
    resolve_scenario(tax["scenarios"][0]["id"], path)  # builds the alias index (duplicate aliases raise)
    return path
