"""In-memory search index of the federated catalogue: French full-text search (BM25F), facets and pagination.

Every catalog node indexes every dataset advertised in the federation (``PublishedDataset``, fed by the NATS
consumer) and answers searches from it: AND of the query's words ranked by BM25F, disjunctive facets (territory,
theme, status, access, licence, format) and pages.

Analysis (``analyze``) — NFKC, casefold, œ/æ spelt out, elisions dropped (l', d', qu', jusqu' ...), split on
non-alphanumerics, French stopwords dropped, then each word is reduced to one or two *keys*:

- ``fold(stem(word))``: the Snowball French stemmer sees the accents it was written for (it tells ``-ité`` from
  ``-ite``, ``-ées`` from ``-ees``), and the stem is then folded (é→e), so "données"/"donnée" meet on ``don``;
- ``stem(fold(word))``: the stem of the word typed without accents.

The second key exists because stemming then folding alone does *not* make both spellings meet: the stemmer strips
fewer suffixes from unaccented words ("mobilités" → ``mobil`` but "mobilites" → ``mobilit``; "activité" → ``activ``
but "activite" → ``activit``). A word typed without accents is its own fold, so both its keys are
``stem(fold(word))``, and a document word carries that key whatever its accents: a query word matches a document
word when they share *any* key. Before stemming, a final ``s`` after a/i/o/u is dropped: Snowball keeps it ("vélos"
stays ``vélos``, "numéros", "revenus", "schémas" likewise), which would leave singular and plural apart. Words with
a digit (INSEE commune codes, SIRENs, years) are kept whole, so codes match exactly.

Scoring is BM25F (k1 = 1.2) over weighted fields: title > keywords > description > theme labels, publisher >
schema field names and titles; commune codes and the SIREN are matched exactly at a constant weight. A query word
with two keys scores with the better of the two. Ties go to the most recently modified, then to the id.

Concurrency: one mutex. A write analyses the text before taking it, then holds it for the keys of one document
(each touched bitmap is an N-bit integer rebuilt at memcpy speed: ~30 µs at 10,000 datasets); a search holds it
for the matching, counting and ranking (about a millisecond at 10,000 datasets) and builds its response models
after releasing it. Under the GIL pure-Python readers cannot run in parallel anyway, so a reader-writer lock
would add cost without adding throughput.
"""

from __future__ import annotations

import heapq
import math
import re
import threading
import unicodedata
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import compress, islice
from typing import Annotated, Any

import snowballstemmer  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from contracts.datasets import AccessLevel, DataStatus, PublishedDataset, distribution_formats
from contracts.vocabularies import LICENCES, DataTheme
from kit.db import as_utc

__all__ = [
    "FACETS",
    "FIELDS",
    "STEMMER_IMPLEMENTATION",
    "STOPWORDS",
    "THEME_LABELS",
    "FacetValue",
    "SearchHit",
    "SearchIndex",
    "SearchQuery",
    "SearchResult",
    "analyze",
    "field_texts",
    "fold_accents",
    "split_words",
]

# --------------------------------------------------------------------------------------------------- analysis

STEMMER_IMPLEMENTATION = (
    "PyStemmer (C libstemmer)"
    if type(snowballstemmer.stemmer("french")).__module__ == "Stemmer"
    else "snowballstemmer (pure Python)"
)
"""Which Snowball implementation ``snowballstemmer`` picked: it uses PyStemmer's C build when importable."""

# Accent-folded forms. Deliberately kept out: "est" (Grand Est), "été" (summer), "nord"/"sud", numbers.
STOPWORDS = frozenset(
    """
    a afin ai ainsi alors apres au aupres aussi autre autres aux avec c ca ce ceci cela celle celles celui ces cet
    cette ceux chaque chez comme d dans de des donc dont du elle elles en entre et etaient etait etre eux hors ici il
    ils j je jusqu jusque l la le les leur leurs lors lorsqu lorsque lui m ma mais me meme mes moi mon n ne ni nos
    notre nous on ont ou par parmi pas pour puis puisqu puisque qu quand que quel quelle quelles quels qui quoi quoiqu
    s sa sans se selon ses si son sont sous sur t ta te tes toi ton tous tout toute toutes tres tu un une vers via vos
    votre vous y
    """.split()
)
"""French function words that never restrict a search (compared after accent folding)."""

_ELISION_RE = re.compile(r"\b(?:jusqu|lorsqu|puisqu|quoiqu|presqu|qu|[cdjlmnst])['’‘ʼ`´]")
_WORD_RE = re.compile(r"[^\W_]+")  # letters and digits; the underscore splits schema names like volume_m3
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae"})
_PLURAL_VOWELS = frozenset("aiouàâäîïôöùûü")
_LOCAL = threading.local()


def fold_accents(text: str) -> str:
    """``text`` without combining marks (é→e, ç→c), recomposed."""
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def _stem(word: str) -> str:
    # PyStemmer's objects are not documented as thread-safe: one per thread (analysis runs in request threads too).
    stemmer = getattr(_LOCAL, "stemmer", None)
    if stemmer is None:
        stemmer = _LOCAL.stemmer = snowballstemmer.stemmer("french")
    stem: str = stemmer.stemWord(word)
    return stem


def _singular(word: str) -> str:
    # Snowball keeps a final s after a, i, o, u ("vélos", "numéros", "revenus", "schémas"); drop it so the plural
    # meets the singular. Short words ("bus", "cas") are left alone.
    if len(word) > 3 and word[-1] == "s" and word[-2] in _PLURAL_VOWELS:
        return word[:-1]
    return word


@lru_cache(maxsize=1 << 16)
def _word_keys(word: str) -> tuple[str, ...]:
    """The index keys of one casefolded word: () for a stopword, else one or two keys (see the module docstring)."""
    folded = fold_accents(word)
    if folded in STOPWORDS or (len(folded) == 1 and not folded.isdigit()):
        return ()
    if any(ch.isdigit() for ch in folded):
        return (folded,)
    accented = fold_accents(_stem(_singular(word)))
    plain = _stem(_singular(folded))
    return (accented,) if accented == plain else (accented, plain)


def split_words(text: str) -> list[str]:
    """The casefolded words of ``text`` (NFKC, œ/æ spelt out, elisions dropped), before stopwords and stemming."""
    normalized = unicodedata.normalize("NFKC", text).casefold().translate(_LIGATURES)
    return _WORD_RE.findall(_ELISION_RE.sub(" ", normalized))


def analyze(text: str) -> list[tuple[str, ...]]:
    """The terms of ``text``, one per kept word, each the tuple of its alternative keys (see the module docstring)."""
    return [keys for keys in map(_word_keys, split_words(text)) if keys]


# --------------------------------------------------------------------------------------------------- API models

FACETS = ("territory", "theme", "status", "access", "licence", "format")
"""Facets, in the order they are returned."""

_FilterValue = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class SearchQuery(BaseModel):
    """A search: full text (AND of the words) and facet filters (OR within a facet, AND across facets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    q: str | None = Field(default=None, max_length=500, description="words; all must match")
    territory: list[_FilterValue] = Field(default_factory=list, max_length=200, description="SIRENs")
    theme: list[DataTheme] = Field(default_factory=list, max_length=20)
    status: list[DataStatus] = Field(default_factory=list, max_length=10)
    access: list[AccessLevel] = Field(default_factory=list, max_length=10)
    licence: list[_FilterValue] = Field(default_factory=list, max_length=20, description="licence URIs")
    format: list[_FilterValue] = Field(default_factory=list, max_length=20, description="CSV, Parquet, API")
    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=20, ge=1, le=100)


class FacetValue(BaseModel):
    """One value of a facet and how many datasets would match with it selected."""

    model_config = ConfigDict(frozen=True)

    value: str
    count: int
    label: str | None = None


class SearchHit(BaseModel):
    """One dataset in a result page."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    description: str = Field(description="the beginning of the description")
    territory: str
    publisher_name: str
    theme: list[DataTheme]
    status: DataStatus
    access: AccessLevel
    licence: str | None
    formats: list[str]
    uri: str
    node: str
    score: float = Field(description="BM25F relevance; 0 without q")
    modified: datetime


class SearchResult(BaseModel):
    """A page of hits, the total and the facet counts."""

    model_config = ConfigDict(frozen=True)

    total: int
    page: int
    per_page: int
    pages: int
    results: list[SearchHit]
    facets: dict[str, list[FacetValue]]


# --------------------------------------------------------------------------------------------------- labels

THEME_LABELS = {theme: theme.label for theme in DataTheme}
"""French labels of the EU data themes (Publications Office authority table)."""

_STATIC_LABELS: dict[str, dict[str, str]] = {
    "theme": {theme.value: label for theme, label in THEME_LABELS.items()},
    "status": {
        DataStatus.PERSONAL.value: "Donnée personnelle",
        DataStatus.PUBLIC.value: "Donnée publique",
        DataStatus.GENERAL_INTEREST.value: "Donnée d'intérêt général",
        DataStatus.PRIVATE_TERRITORIAL_INTEREST.value: "Donnée privée d'intérêt territorial",
    },
    "access": {
        AccessLevel.OPEN.value: "Ouvert",
        AccessLevel.RESTRICTED.value: "Sous convention",
        AccessLevel.PROTECTED.value: "Agrégats seulement, sous convention",
    },
    "licence": {uri: licence.label for uri, licence in LICENCES.items()},
    "format": {},
}

# --------------------------------------------------------------------------------------------------- documents

FIELDS = (
    ("title", 5.0, 0.75),
    ("keywords", 3.0, 0.5),
    ("description", 1.5, 0.75),
    ("themes", 1.0, 0.0),
    ("publisher", 1.0, 0.5),
    ("schema", 0.6, 0.75),
    ("codes", 1.0, 0.0),
)
"""Indexed fields as (name, BM25F weight, length normalisation b); codes are exact identifiers, not normalised."""
_WEIGHTS = tuple(weight for _, weight, _ in FIELDS)
_B = tuple(b for _, _, b in FIELDS)
_K1 = 1.2
_EXCERPT = 240
# Length normalisation uses reference average field lengths, refreshed when the true averages drift by more than
# this fraction: a stream of upserts then does not throw away the cached impacts on every write.
_DRIFT = 0.02
_IMPACT_CACHE_KEYS = 4096

Pattern = tuple[tuple[int, int], ...]
"""Where a key occurs in a document: ((field index, term frequency), ...)."""

_PATTERNS: dict[Pattern, Pattern] = {}  # interned: a handful of distinct patterns are shared by millions of postings


def _excerpt(text: str) -> str:
    if len(text) <= _EXCERPT:
        return text
    cut = text.rfind(" ", 0, _EXCERPT)
    return text[: cut if cut > _EXCERPT // 2 else _EXCERPT].rstrip(" ,;:.—-") + "…"


def field_texts(dataset: PublishedDataset) -> tuple[str, ...]:
    """The text of each of ``FIELDS`` for ``dataset``."""
    metadata = dataset.metadata
    schema = " ; ".join(
        f"{field.name.replace('_', ' ')} ; {field.title or ''}" for field in metadata.table_schema.fields
    )
    granularity = metadata.granularity.spatial if metadata.granularity and metadata.granularity.spatial else ""
    return (
        metadata.title,
        " ; ".join(metadata.keywords),
        f"{metadata.description} ; {granularity}",
        " ; ".join(THEME_LABELS[theme] for theme in metadata.theme),
        dataset.publisher_name,
        schema,
        " ".join([dataset.territory, *metadata.spatial.communes]),
    )


@dataclass(frozen=True, slots=True)
class _Entry:
    dataset: PublishedDataset
    order: tuple[float, str]  # (-modified, id): ascending order is modified desc, then id
    terms: dict[str, Pattern]
    lengths: tuple[int, ...]
    facets: tuple[tuple[str, str], ...]
    hit: dict[str, Any]  # SearchHit fields but the score


def _entry(dataset: PublishedDataset) -> _Entry:
    counts: dict[str, Counter[int]] = {}
    lengths = []
    for index, text in enumerate(field_texts(dataset)):
        terms = analyze(text)
        lengths.append(len(terms))
        for keys in terms:
            for key in keys:
                counts.setdefault(key, Counter())[index] += 1
    patterns = {}
    for key, per_field in counts.items():
        pattern = tuple(sorted(per_field.items()))
        patterns[key] = _PATTERNS.setdefault(pattern, pattern)
    metadata = dataset.metadata
    formats = distribution_formats(metadata)
    facets = [("territory", dataset.territory), ("status", metadata.status.value), ("access", metadata.access.value)]
    facets += [("theme", theme.value) for theme in metadata.theme]
    facets += [("format", value) for value in formats]
    if metadata.licence is not None:  # datasets under an agreement have no licence: they are left out of the facet
        facets.append(("licence", metadata.licence))
    modified = as_utc(dataset.modified)
    hit = {
        "id": dataset.id,
        "title": metadata.title,
        "description": _excerpt(metadata.description),
        "territory": dataset.territory,
        "publisher_name": dataset.publisher_name,
        "theme": list(metadata.theme),
        "status": metadata.status,
        "access": metadata.access,
        "licence": metadata.licence,
        "formats": list(formats),
        "uri": str(dataset.uri),
        "node": dataset.node,
        "modified": modified,
    }
    return _Entry(dataset, (-modified.timestamp(), dataset.id), patterns, tuple(lengths), tuple(facets), hit)


_ZERO_ONE = bytes.maketrans(b"01", b"\x00\x01")


def _flags(bitmap: int, size: int) -> bytes:
    """One byte per slot, 1 where ``bitmap`` has the slot's bit (C-speed: no Python loop over bits)."""
    return bin(bitmap)[:1:-1].encode("ascii").translate(_ZERO_ONE).ljust(size, b"\x00")


def _slots(bitmap: int) -> list[int]:
    """The set bits of ``bitmap``, ascending."""
    flags = _flags(bitmap, 0)
    return list(compress(range(len(flags)), flags))


def _page_count(total: int, per_page: int) -> int:
    return -(-total // per_page)


# --------------------------------------------------------------------------------------------------- the index


class SearchIndex:
    """Every dataset advertised in the federation, searchable; safe for one writer thread and many readers.

    Each dataset has a slot; postings and facet values are bitmaps over slots (Python ints), so matching, filtering
    and facet counting are a few big-integer ANDs and popcounts. BM25F impacts are computed per key on first use
    and cached, kept current by the writes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, _Entry] = {}
        self._slot_of: dict[str, int] = {}
        self._entries: list[_Entry | None] = []
        self._free: list[int] = []
        self._all = 0
        self._postings: dict[str, int] = {}
        self._facets: dict[str, dict[str, int]] = {facet: {} for facet in FACETS}
        self._territory_names: dict[str, str] = {}
        self._recency: list[tuple[float, str]] = []  # sorted entry orders ...
        self._recency_slots: list[int] = []  # ... and their slots, in the same order
        self._length_sums = [0] * len(FIELDS)
        self._reference_lengths = tuple(1.0 for _ in FIELDS)
        self._field_factors: dict[int, tuple[float, ...]] = {}  # slot -> weight / length norm, per reference
        self._impacts: dict[str, dict[int, float]] = {}  # key -> slot -> saturated BM25F tf

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, dataset_id: str) -> PublishedDataset | None:
        """The held revision of a dataset, or None."""
        entry = self._by_id.get(dataset_id)
        return entry.dataset if entry is not None else None

    def upsert(self, dataset: PublishedDataset) -> None:
        """Index ``dataset``, replacing the revision held; an older one (revision, then modified) is ignored."""
        entry = _entry(dataset)  # the analysis is the costly part: done before taking the lock
        with self._lock:
            held = self._by_id.get(dataset.id)
            if held is not None:
                if (dataset.revision, as_utc(dataset.modified)) < (
                    held.dataset.revision,
                    as_utc(held.dataset.modified),
                ):
                    return
                slot = self._slot_of[dataset.id]
                self._unlink(held, slot)
            elif self._free:
                slot = self._free.pop()
            else:
                slot = len(self._entries)
                self._entries.append(None)
            self._link(entry, slot)
            self._refresh_reference_lengths()

    def remove(self, dataset_id: str, *, revision: int | None = None) -> bool:
        """Drop a dataset; with ``revision``, only if the held revision is not newer. True if it was dropped."""
        with self._lock:
            held = self._by_id.get(dataset_id)
            if held is None or (revision is not None and held.dataset.revision > revision):
                return False
            slot = self._slot_of.pop(dataset_id)
            self._unlink(held, slot)
            del self._by_id[dataset_id]
            self._free.append(slot)
            self._refresh_reference_lengths()
            return True

    def search(self, query: SearchQuery) -> SearchResult:
        """A page of the datasets matching ``query``, with the total and the disjunctive facet counts."""
        q = query.q.strip() if query.q else ""
        words = list(dict.fromkeys(analyze(q))) if q else None
        selected: dict[str, list[str]] = {
            "territory": list(query.territory),
            "theme": [value.value for value in query.theme],
            "status": [value.value for value in query.status],
            "access": [value.value for value in query.access],
            "licence": list(query.licence),
            "format": list(query.format),
        }
        start = (query.page - 1) * query.per_page
        with self._lock:
            # Words that are all stopwords match nothing (rather than everything).
            base = self._all if words is None or words else 0
            word_bitmaps = []
            for keys in words or ():
                bitmap = 0
                for key in keys:
                    bitmap |= self._postings.get(key, 0)
                word_bitmaps.append(bitmap)
                base &= bitmap
            filters = {
                facet: self._union(facet, values) for facet, values in selected.items() if values
            }  # OR within a facet
            matching = base
            for bitmap in filters.values():
                matching &= bitmap
            facets = self._facet_counts(base, filters, selected)
            total = matching.bit_count()
            if start >= total:
                page: list[tuple[_Entry, float]] = []
            elif words:
                page = self._ranked_page(words, word_bitmaps, matching, start, query.per_page)
            else:
                flags = _flags(matching, len(self._entries))
                ordered = compress(self._recency_slots, map(flags.__getitem__, self._recency_slots))
                page = [(self._live(slot), 0.0) for slot in islice(ordered, start, start + query.per_page)]
        # Entries are immutable: the response is built outside the lock. model_construct skips re-validating what
        # was validated when the dataset was indexed.
        results = [SearchHit.model_construct(**entry.hit, score=round(score, 4)) for entry, score in page]
        return SearchResult.model_construct(
            total=total,
            page=query.page,
            per_page=query.per_page,
            pages=_page_count(total, query.per_page),
            results=results,
            facets={
                facet: [FacetValue.model_construct(value=v, count=c, label=label) for v, c, label in values]
                for facet, values in facets.items()
            },
        )

    # ------------------------------------------------------------------------------------------- writes (locked)

    def _link(self, entry: _Entry, slot: int) -> None:
        bit = 1 << slot
        dataset_id = entry.dataset.id
        self._entries[slot] = entry
        self._by_id[dataset_id] = entry
        self._slot_of[dataset_id] = slot
        self._all |= bit
        postings = self._postings
        for key in entry.terms:
            postings[key] = postings.get(key, 0) | bit
            cached = self._impacts.get(key)
            if cached is not None:
                cached[slot] = self._impact(entry, slot, key)
        for facet, value in entry.facets:
            values = self._facets[facet]
            values[value] = values.get(value, 0) | bit
        self._territory_names[entry.dataset.territory] = entry.dataset.publisher_name
        position = bisect_left(self._recency, entry.order)
        self._recency.insert(position, entry.order)
        self._recency_slots.insert(position, slot)
        for index, length in enumerate(entry.lengths):
            self._length_sums[index] += length

    def _unlink(self, entry: _Entry, slot: int) -> None:
        bit = 1 << slot
        self._entries[slot] = None
        self._all ^= bit
        postings = self._postings
        for key in entry.terms:
            remaining = postings[key] ^ bit
            if remaining:
                postings[key] = remaining
            else:
                del postings[key]
            cached = self._impacts.get(key)
            if cached is not None:
                cached.pop(slot, None)
        for facet, value in entry.facets:
            values = self._facets[facet]
            remaining = values[value] ^ bit
            if remaining:
                values[value] = remaining
            else:
                del values[value]
        self._field_factors.pop(slot, None)
        position = bisect_left(self._recency, entry.order)
        del self._recency[position]
        del self._recency_slots[position]
        for index, length in enumerate(entry.lengths):
            self._length_sums[index] -= length

    def _refresh_reference_lengths(self) -> None:
        count = len(self._by_id)
        if not count:
            return
        current = tuple(max(total / count, 1.0) for total in self._length_sums)
        if any(abs(now - ref) > _DRIFT * ref for now, ref in zip(current, self._reference_lengths, strict=True)):
            self._reference_lengths = current
            self._field_factors = {}
            self._impacts = {}

    # ------------------------------------------------------------------------------------------- reads (locked)

    def _live(self, slot: int) -> _Entry:
        entry = self._entries[slot]
        assert entry is not None, "a slot in a live bitmap holds an entry"
        return entry

    def _union(self, facet: str, values: list[str]) -> int:
        bitmaps = self._facets[facet]
        bitmap = 0
        for value in values:
            bitmap |= bitmaps.get(value, 0)
        return bitmap

    def _facet_counts(
        self, base: int, filters: dict[str, int], selected: dict[str, list[str]]
    ) -> dict[str, list[tuple[str, int, str | None]]]:
        facets = {}
        for facet in FACETS:
            # Disjunctive faceting: a facet's counts ignore its own filter, so its other values stay selectable.
            mask = base
            for other, bitmap in filters.items():
                if other != facet:
                    mask &= bitmap
            counts = {}
            if mask:
                for value, bitmap in self._facets[facet].items():
                    count = (mask & bitmap).bit_count()
                    if count:
                        counts[value] = count
            for value in selected[facet]:
                counts.setdefault(value, 0)  # a selected value stays listed (at 0) so it can be unselected
            labels = self._territory_names if facet == "territory" else _STATIC_LABELS[facet]
            facets[facet] = [
                (value, count, labels.get(value))
                for value, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            ]
        return facets

    def _ranked_page(
        self, words: list[tuple[str, ...]], word_bitmaps: list[int], matching: int, start: int, per_page: int
    ) -> list[tuple[_Entry, float]]:
        slots = _slots(matching)
        count = len(self._by_id)
        scores = [0.0] * len(slots)
        for keys, bitmap in zip(words, word_bitmaps, strict=True):
            frequency = bitmap.bit_count()
            idf = math.log(1.0 + (count - frequency + 0.5) / (frequency + 0.5))
            if len(keys) == 1:
                impacts = self._impacts_of(keys[0])
                scores = [
                    score + idf * impact for score, impact in zip(scores, map(impacts.__getitem__, slots), strict=True)
                ]
            else:
                # The word matches through either key; it scores with the better one.
                tables = [self._impacts_of(key) for key in keys]
                scores = [
                    score + idf * max(table.get(slot, 0.0) for table in tables)
                    for score, slot in zip(scores, slots, strict=True)
                ]
        wanted = start + per_page
        if wanted < len(slots):
            # Keep every candidate tied with the last one wanted, so ties are broken by date and id, not by slot.
            threshold = heapq.nlargest(wanted, scores)[-1]
            candidates = [(score, slot) for score, slot in zip(scores, slots, strict=True) if score >= threshold]
        else:
            candidates = list(zip(scores, slots, strict=True))
        entries = self._entries
        candidates.sort(key=lambda item: (-item[0], entries[item[1]].order))  # type: ignore[union-attr]
        return [(self._live(slot), score) for score, slot in candidates[start:wanted]]

    def _impacts_of(self, key: str) -> dict[int, float]:
        impacts = self._impacts.get(key)
        if impacts is None:
            if len(self._impacts) >= _IMPACT_CACHE_KEYS:
                del self._impacts[next(iter(self._impacts))]  # the oldest key cached
            impacts = {slot: self._impact(self._live(slot), slot, key) for slot in _slots(self._postings.get(key, 0))}
            self._impacts[key] = impacts
        return impacts

    def _impact(self, entry: _Entry, slot: int, key: str) -> float:
        factors = self._field_factors.get(slot)
        if factors is None:
            factors = self._field_factors[slot] = tuple(
                weight / (1.0 - b + b * length / reference)
                for weight, b, length, reference in zip(
                    _WEIGHTS, _B, entry.lengths, self._reference_lengths, strict=True
                )
            )
        frequency = sum(tf * factors[field] for field, tf in entry.terms[key])
        return frequency * (_K1 + 1.0) / (_K1 + frequency)
