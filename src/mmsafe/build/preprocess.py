"""Preprocessing agent: ingest pools, filter, deduplicate and classify into the taxonomy.

Pools (``preprocess.pools``): any benchmark directory (``kind: benchmark``, e.g. written by
``mmsafe import``), a folder of images (``images``; a sub-folder name that maps onto the
taxonomy labels its images), CSV or JSONL prompts (``csv`` / ``jsonl`` with ``mapping:
{question: COLUMN, scenario: COLUMN, image: COLUMN}``).

Filters, in order: prompts of ≤ 24 characters (``min_chars`` 25), unreadable/corrupt
images, images whose shorter side is under ``min_image_side``; then images deduplicated by
perceptual hash (64-bit dHash, Hamming distance ≤ ``image_hash_distance``) and prompts by
embedding near-duplicates (cosine ≥ ``text_dup_threshold``). Classification: a pool's own
scenario label when it maps onto the taxonomy (``trust_source_labels``), else the LLM
classifier (``classifier: llm`` with ``models.classifier``) or the offline nearest-scenario
embedding classifier. Every step's counts go into the report.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from mmsafe.embeddings import dedupe_indices, get_embedder
from mmsafe.taxonomy import normalize_name

from .common import AgentContext, BuildError, WorkDir, extract_json, item_id, user
from .config import BuildConfig, Pool, PreprocessConfig
from .prompts import render

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
QUESTION_COLUMNS = ("question", "prompt", "query", "goal", "behavior", "instruction", "text", "harmful_query")
SCENARIO_COLUMNS = ("scenario", "category", "semantic_category", "harm_category", "topic")


# --------------------------------------------------------------------------- hashing


def dhash(img: Image.Image, size: int = 8) -> int:
    """64-bit difference hash (grey, (size+1)×size, left-right gradient signs)."""
    g = img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    a = np.asarray(g, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def dedupe_hashes(hashes: list[int], max_distance: int) -> tuple[list[int], dict[int, int]]:
    """Keep a hash unless it is within ``max_distance`` bits of a kept one."""
    kept: list[int] = []
    dropped: dict[int, int] = {}
    arr = np.zeros(len(hashes), dtype=np.uint64)
    for i, h in enumerate(hashes):
        if kept:
            x = np.bitwise_xor(arr[:len(kept)], np.uint64(h))
            d = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            j = int(np.argmin(d))
            if d[j] <= max_distance:
                dropped[i] = kept[j]
                continue
        arr[len(kept)] = np.uint64(h)
        kept.append(i)
    return kept, dropped


# --------------------------------------------------------------------------- pools


def _col(row: dict[str, Any], mapping: dict[str, str], field: str, defaults: tuple[str, ...]) -> Any:
    if field in mapping:
        return row.get(mapping[field])
    lower = {str(k).lower(): k for k in row}
    for c in defaults:
        if c in lower:
            return row[lower[c]]
    return None


def _limited(it: Iterable[Any], limit: int | None) -> Iterator[Any]:
    """The first ``limit`` elements of ``it`` (all when None); like the pool readers always did, the
    element after the last is still drawn before stopping."""
    for n, x in enumerate(it):
        if limit is not None and n >= limit:
            return
        yield x


def iter_pool(pool: Pool, cfg: BuildConfig) -> Iterator[dict[str, Any]]:
    """Raw records: {question, scenario_label, image_bytes | image_path, origin}."""
    path = cfg.path(pool.path)
    if path is None or not path.exists():
        raise BuildError(f"preprocess.pools: {pool.path}: not found")
    if pool.kind == "benchmark":
        yield from _benchmark_records(pool, path)
    elif pool.kind == "images":
        yield from _image_records(pool, path)
    elif pool.kind in ("csv", "jsonl"):
        yield from _row_records(pool, path)


def _benchmark_records(pool: Pool, path: Path) -> Iterator[dict[str, Any]]:
    """One record per sample of a benchmark directory: its question (or last user turn) and first image."""
    from mmsafe.datasets import open_benchmark
    bench = open_benchmark(path)
    for s in _limited(bench.iter_samples(), pool.limit):
        img = next((a for a in s.assets() if a.type == "image"), None)
        last = next((m for m in reversed(s.messages) if m.role == "user"), None)
        rec = {"question": s.question or (last.text if last else ""), "text": last.text if last else None,
               "scenario_label": pool.scenario or s.scenario, "category": s.category,
               "origin": f"{path.name}:{s.id}"}
        if img is not None and img.path:
            try:
                rec["image_bytes"] = bench.read_asset(img, verify=False)
            except Exception as e:  # unreadable asset -> counted as corrupt
                rec["image_error"] = str(e)
        yield rec


def _image_records(pool: Pool, path: Path) -> Iterator[dict[str, Any]]:
    """One record per image file under ``path``; a sub-folder's name is its label."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    for p in _limited(files, pool.limit):
        label = pool.scenario or (p.parent.name if p.parent != path else None)
        yield {"question": "", "scenario_label": label, "image_path": p, "origin": str(p.relative_to(path))}


def _read_rows(kind: str, path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every row of a CSV (header = line 1) or non-blank line of a JSONL file."""
    if kind == "csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [(i + 2, r) for i, r in enumerate(csv.DictReader(f))]
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, "rb") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append((i, orjson.loads(line)))
                except orjson.JSONDecodeError:
                    raise BuildError(f"{path}:{i}: not valid JSON") from None
    return rows


def _row_records(pool: Pool, path: Path) -> Iterator[dict[str, Any]]:
    """One record per CSV / JSONL row, columns found through ``pool.mapping`` or the usual names."""
    for lineno, r in _limited(_read_rows(pool.kind, path), pool.limit):
        q = _col(r, pool.mapping, "question", QUESTION_COLUMNS)
        rec: dict[str, Any] = {"question": str(q or ""), "origin": f"{path.name}:{lineno}",
                               "scenario_label": pool.scenario or _col(r, pool.mapping, "scenario", SCENARIO_COLUMNS)}
        im = _col(r, pool.mapping, "image", ("image", "image_path", "img"))
        if im:
            rec["image_path"] = (path.parent / str(im))
        yield rec


# --------------------------------------------------------------------------- agent


def scenario_index(taxonomy: dict[str, Any]) -> dict[str, str]:
    idx: dict[str, str] = {}
    for s in taxonomy["scenarios"]:
        for n in [s["id"], s.get("name", ""), *(s.get("aliases") or [])]:
            k = normalize_name(n)
            if k:
                idx.setdefault(k, s["id"])
    return idx


def scenario_text(s: dict[str, Any]) -> str:
    return f"{s.get('name', s['id'])}. {s.get('description', '')} {' '.join(s.get('aliases') or [])}"


def embedding_classify(texts: list[str], taxonomy: dict[str, Any], embedder, min_sim: float = 0.0
                       ) -> list[tuple[str, float]]:
    """Nearest scenario description by cosine (one embedding batch for both sides)."""
    scen = taxonomy["scenarios"]
    if not texts:
        return []
    emb = embedder.embed([scenario_text(s) for s in scen] + list(texts))
    se, te = emb[: len(scen)], emb[len(scen):]
    sims = te @ se.T
    out = []
    for row in sims:
        j = int(np.argmax(row))
        out.append((scen[j]["id"] if row[j] >= min_sim and row[j] > 0 else "unspecified", float(row[j])))
    return out


async def run_preprocess(ctx: AgentContext, taxonomy: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ingest every pool, filter, deduplicate and classify -> (items, report with every step's counts)."""
    pc = ctx.cfg.preprocess
    recs, counts, per_pool = _ingest_pools(ctx, pc)
    recs = _dedupe_images(recs, pc.image_hash_distance, counts)
    embedder = get_embedder(ctx.cfg.embedder) if recs else None
    recs = _dedupe_texts(recs, embedder, pc.text_dup_threshold, counts)
    how = await _classify(ctx, recs, taxonomy, embedder)
    cats = {s["id"]: s.get("category") for s in taxonomy["scenarios"]}
    items = [_to_item(r, cats) for r in recs]
    by_scen: Counter[str] = Counter(it["scenario"] for it in items)
    report = {"counts": dict(counts), "per_pool": per_pool, "classified": dict(how), "by_scenario": dict(by_scen),
              "items": len(items), "embedder": embedder.name if embedder else None}
    return items, report


def _ingest_pools(ctx: AgentContext,
                  pc: PreprocessConfig) -> tuple[list[dict[str, Any]], Counter[str], dict[str, dict[str, int]]]:
    """Every pool's records that pass the filters, images stored in the work dir -> (records, counts, per pool)."""
    counts: Counter[str] = Counter()
    per_pool: dict[str, dict[str, int]] = {}
    recs: list[dict[str, Any]] = []
    for k, pool in enumerate(pc.pools):
        pname = f"{pool.kind}:{Path(pool.path).name}"
        pcnt: Counter[str] = Counter()
        for r in iter_pool(pool, ctx.cfg):
            pcnt["input"] += 1
            dropped = _filter_record(r, pc, ctx.wd)
            if dropped:
                pcnt[dropped] += 1
                continue
            r["_pool"] = pname
            recs.append(r)
            pcnt["passed_filters"] += 1
        per_pool[pname + (f"#{k}" if pname in per_pool else "")] = dict(pcnt)
        counts.update(pcnt)
    return recs, counts, per_pool


def _filter_record(r: dict[str, Any], pc: PreprocessConfig, wd: WorkDir) -> str | None:
    """Apply the prompt and image filters to one raw record -> the counter of the filter that dropped it,
    or None when it passes (then its image is in the work dir and the record normalised in place)."""
    q = " ".join(str(r.get("question") or "").split())
    has_img = "image_bytes" in r or "image_path" in r or "image_error" in r
    if q and len(q) < pc.min_chars:
        return "dropped_short"
    if not q and not has_img:
        return "dropped_empty"
    rel = None
    if has_img:
        img = _open_image(r)
        if img is None:
            return "dropped_corrupt_image"
        if min(img.size) < pc.min_image_side:
            return "dropped_small_image"
        rel = wd.put_image(img)
        r["_dhash"] = dhash(img)
    r.pop("image_bytes", None)  # the bytes are in the work dir now; keep only metadata in memory
    r["question"] = q
    r["_img"] = rel
    return None


def _open_image(r: dict[str, Any]) -> Image.Image | None:
    """A record's image, verified and decoded as RGB; None when unreadable or corrupt."""
    try:
        if "image_error" in r:
            raise OSError(r["image_error"])
        data = r.get("image_bytes") or Path(r["image_path"]).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except Exception:
        return None


def _dedupe_images(recs: list[dict[str, Any]], max_distance: int, counts: Counter[str]) -> list[dict[str, Any]]:
    """Drop perceptual-hash duplicate images; a duplicate with its own question stays, with the first image."""
    img_idx = [i for i, r in enumerate(recs) if r["_img"]]
    _kept, dropped_i = dedupe_hashes([recs[i]["_dhash"] for i in img_idx], max_distance)
    drop = {img_idx[d] for d in dropped_i}
    counts["dropped_duplicate_image"] = len(drop)
    out = []
    for i, r in enumerate(recs):
        if i in drop:
            if not r["question"]:
                continue
            r["_img"] = recs[img_idx[dropped_i[img_idx.index(i)]]]["_img"]
        out.append(r)
    return out


def _dedupe_texts(recs: list[dict[str, Any]], embedder: Any, threshold: float,
                  counts: Counter[str]) -> list[dict[str, Any]]:
    """Drop embedding near-duplicate questions (cosine >= ``threshold``)."""
    txt_idx = [i for i, r in enumerate(recs) if r["question"]]
    if len(txt_idx) <= 1:
        return recs
    emb = embedder.embed([recs[i]["question"] for i in txt_idx])
    _k, dropped_t = dedupe_indices(emb, threshold)
    dset = {txt_idx[d] for d in dropped_t}
    counts["dropped_duplicate_text"] = len(dset)
    return [r for i, r in enumerate(recs) if i not in dset]


async def _classify(ctx: AgentContext, recs: list[dict[str, Any]], taxonomy: dict[str, Any],
                    embedder: Any) -> Counter[str]:
    """Set each record's ``_scenario``: its source label when trusted and known, else the configured
    classifier's answer -> how many were classified which way."""
    pc = ctx.cfg.preprocess
    idx = scenario_index(taxonomy)
    how: Counter[str] = Counter()
    todo: list[dict[str, Any]] = []
    for r in recs:
        lab = r.get("scenario_label")
        sid = idx.get(normalize_name(str(lab))) if (lab and pc.trust_source_labels) else None
        r["_scenario"] = sid
        if sid:
            how["source_label"] += 1
        else:
            todo.append(r)
    if todo:
        if pc.classifier == "llm":
            await _classify_llm(ctx, todo, taxonomy, idx, how)
        else:
            _classify_embedding(todo, taxonomy, embedder, pc.min_similarity, how)
    return how


async def _classify_llm(ctx: AgentContext, todo: list[dict[str, Any]], taxonomy: dict[str, Any],
                        idx: dict[str, str], how: Counter[str]) -> None:
    """The LLM classifier: one request per record (a vision request for an image-only one)."""
    wd = ctx.wd
    clf = await ctx.client("classifier", fallback="generator")
    listing = "\n".join(f"- {s['id']}: {s.get('name', '')} — {s.get('description', '')}"
                        for s in taxonomy["scenarios"])

    async def classify(r: dict[str, Any]) -> None:
        if r["question"]:
            msgs = user(render("classifier", scenarios=listing, text=r["question"].replace('"', "'")))
        else:
            msgs = user(render("classifier_image", scenarios=listing), [wd.part(r["_img"])])
        res = await clf.chat(msgs, root=wd.root, params={"temperature": 0})
        sid = _scenario_answer(res.text if res.ok else None, idx)
        if sid is None:
            how["llm_unparsable_or_unknown"] += 1
        else:
            how["llm"] += 1
        r["_scenario"] = sid or "unspecified"
        r["_classified_by"] = clf.name

    await ctx.gather(classify(r) for r in todo)


def _scenario_answer(text: str | None, idx: dict[str, str]) -> str | None:
    """The taxonomy id in a classifier's JSON answer (``{"scenario": ...}`` or a bare string), if known."""
    try:
        d = extract_json(text)
        sid = d.get("scenario") if isinstance(d, dict) else d if isinstance(d, str) else None
        return idx.get(normalize_name(str(sid))) if sid else None
    except ValueError:
        return None


def _classify_embedding(todo: list[dict[str, Any]], taxonomy: dict[str, Any], embedder: Any, min_sim: float,
                        how: Counter[str]) -> None:
    """The offline classifier: nearest scenario description; image-only records stay unspecified."""
    res = iter(embedding_classify([r["question"] for r in todo if r["question"]], taxonomy, embedder, min_sim))
    for r in todo:
        if r["question"]:
            sid, sim = next(res)
            r["_scenario"], r["_similarity"] = sid, round(sim, 4)
            r["_classified_by"] = f"embedding:{embedder.name}"
            how["embedding"] += 1
        else:
            r["_scenario"] = "unspecified"
            how["unclassified_image"] += 1


def _to_item(r: dict[str, Any], cats: dict[str, Any]) -> dict[str, Any]:
    """A filtered, classified record as a build item with its provenance."""
    sid = r["_scenario"] or "unspecified"
    q = r["question"]
    it = {"id": item_id("pool", r["_pool"], r["origin"], q, r["_img"]), "scenario": sid,
          "category": cats.get(sid), "question": q, "text": r.get("text") or q,
          "source": "pool:" + r["_pool"], "pair_type": "plain" if q else "image_only",
          "provenance": {"pool": r["_pool"], "origin": r["origin"],
                         "source_label": r.get("scenario_label"),
                         "classified_by": r.get("_classified_by", "source_label"),
                         **({"similarity": r["_similarity"]} if "_similarity" in r else {})}}
    if r["_img"]:
        it["images"] = [r["_img"]]
    return it
