"""The federated catalogue's search index: French analysis, AND matching, ranking, facets, pages, revisions, threads."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import snowballstemmer
from pydantic import ValidationError

from catalog.search import (
    FACETS,
    STEMMER_IMPLEMENTATION,
    SearchIndex,
    SearchQuery,
    SearchResult,
    analyze,
)
from catalog.seeds import SeedTerritory, demo_published
from contracts.datasets import PublishedDataset, distribution_formats

DIJON = SeedTerritory("242100410", "Dijon Métropole", ("21231", "21166", "21617"), "node-dijon")
BESANCON = SeedTerritory("242500361", "Grand Besançon Métropole", ("25056", "25527"), "node-besancon")
NORGE = SeedTerritory("200069540", "CC Norge et Tille", ("21021", "21657"), "node-dijon")
LOUE = SeedTerritory("200068070", "CC Loue-Lison", ("25434", "2A004"), "node-besancon")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _published(territory: SeedTerritory, offset: int = 0) -> list[PublishedDataset]:
    """The demo datasets of a territory, each modified at a distinct, known moment."""
    datasets = demo_published(
        territory, catalog_url=f"https://{territory.node}.example.fr", exchange_url="https://x.example.fr"
    )
    return [
        dataset.model_copy(update={"modified": T0 + timedelta(hours=offset + i)}) for i, dataset in enumerate(datasets)
    ]


def _variant(dataset: PublishedDataset, **changes: Any) -> PublishedDataset:
    """``dataset`` with metadata fields and dataset fields changed (no re-validation: text only)."""
    metadata_fields = set(type(dataset.metadata).model_fields)
    metadata = dataset.metadata.model_copy(update={k: v for k, v in changes.items() if k in metadata_fields})
    rest = {k: v for k, v in changes.items() if k not in metadata_fields}
    return dataset.model_copy(update={"metadata": metadata, **rest})


@pytest.fixture
def index() -> SearchIndex:
    index = SearchIndex()
    for offset, territory in enumerate((DIJON, BESANCON)):
        for dataset in _published(territory, offset * 10):
            index.upsert(dataset)
    return index


def _ids(result: SearchResult) -> list[str]:
    return [hit.id for hit in result.results]


def _search(index: SearchIndex, **query: Any) -> SearchResult:
    return index.search(SearchQuery.model_validate(query))


def _shares_a_key(left: str, right: str) -> bool:
    (a,), (b,) = analyze(left), analyze(right)
    return bool(set(a) & set(b))


# ----------------------------------------------------------------------------------------------------- analysis


@pytest.mark.parametrize(
    ("typed", "indexed"),
    [
        ("velo", "vélo"),
        ("Vélos", "vélo"),
        ("VELOS", "vélo"),
        ("vélo", "velos"),
        ("mobilites", "mobilités"),  # the stemmer strips less from the unaccented word: the second key meets it
        ("activités", "activite"),
        ("consommations", "consommation"),
        ("réseaux", "reseau"),
        ("numeros", "numéro"),
        ("detectees", "détectées"),
        ("coeur", "Cœur"),
    ],
)
def test_spellings_meet_with_or_without_accents_and_in_the_plural(typed: str, indexed: str) -> None:
    assert _shares_a_key(typed, indexed)


def test_stemming_is_done_before_folding_so_accents_guide_the_stemmer() -> None:
    # "données" and "donnée" meet on the stem of the accented words, which the unaccented forms cannot reach.
    assert analyze("données") == analyze("donnée")
    assert "don" in analyze("données")[0]


def test_elisions_stopwords_and_codes() -> None:
    assert analyze("d'eau") == analyze("eau") == analyze("l’eau") == analyze("qu'eau")
    assert analyze("le la les de des du et à au aux jusqu'à") == []
    assert analyze("Grand Est été") != []  # "est" and "été" are meaningful in French territorial data
    assert analyze("21231 2A004 242100410") == [("21231",), ("2a004",), ("242100410",)]
    assert analyze("volume_m3") == [("volum",), ("m3",)]


def test_the_c_stemmer_is_used_and_agrees_with_the_pure_python_one() -> None:
    from snowballstemmer.french_stemmer import FrenchStemmer

    assert STEMMER_IMPLEMENTATION.startswith("PyStemmer")
    fast, slow = snowballstemmer.stemmer("french"), FrenchStemmer()
    words = "vélos consommations fréquentation réseaux détectées ménages déchèteries électricité activités".split()
    assert [fast.stemWord(w) for w in words] == [slow.stemWord(w) for w in words]


# ----------------------------------------------------------------------------------------------------- matching


def test_accents_are_folded_both_ways(index: SearchIndex) -> None:
    expected = {"242100410/comptages-velo", "242500361/comptages-velo"}
    for q in ("velo", "Vélo", "Vélos", "velos", "VÉLO"):
        assert set(_ids(_search(index, q=q))) == expected, q


def test_plurals_and_derived_forms_match(index: SearchIndex) -> None:
    assert set(_ids(_search(index, q="consommations"))) == {
        "242100410/consommation-eau-menages",
        "242500361/consommation-eau-menages",
    }
    assert _search(index, q="fuite détectée").total == 2


def test_elisions(index: SearchIndex) -> None:
    with_elision, without = _search(index, q="d'eau"), _search(index, q="eau")
    assert _ids(with_elision) == _ids(without) and without.total == 4


def test_stopwords_do_not_match_everything(index: SearchIndex) -> None:
    only_stopwords = _search(index, q="le de la des")
    assert only_stopwords.total == 0 and only_stopwords.results == [] and only_stopwords.pages == 0
    assert _ids(_search(index, q="la consommation de l'eau des")) == _ids(_search(index, q="consommation eau"))


def test_all_words_must_match(index: SearchIndex) -> None:
    assert _search(index, q="eau").total == 4
    assert set(_ids(_search(index, q="eau potable"))) == {"242100410/fuites-reseau-eau", "242500361/fuites-reseau-eau"}
    assert _search(index, q="vélo eau").total == 0
    assert _search(index, q="vélo inconnu").total == 0
    assert _ids(_search(index, q="bus dijon")) == ["242100410/frequentation-bus"]


def test_insee_codes_and_siren_match_exactly(index: SearchIndex) -> None:
    assert {hit.territory for hit in _search(index, q="21166").results} == {DIJON.siren}
    assert _search(index, q="21166").total == 4
    assert {hit.territory for hit in _search(index, q="242500361").results} == {BESANCON.siren}
    assert _search(index, q="2116").total == 0  # no prefix matching on codes
    assert _ids(_search(index, q="25056 vélo")) == ["242500361/comptages-velo"]


def test_blank_q_is_no_q(index: SearchIndex) -> None:
    assert _search(index, q="   ").total == _search(index).total == 8


# ----------------------------------------------------------------------------------------------------- ranking


def test_title_outranks_keywords_outranks_description() -> None:
    index = SearchIndex()
    base = _published(DIJON)[3]  # leaks: "lavoir" appears nowhere
    in_description = _variant(
        base, id=f"{DIJON.siren}/a", slug="a", description="Fuites sur le réseau, près du lavoir communal."
    )
    in_keywords = _variant(base, id=f"{DIJON.siren}/b", slug="b", keywords=["lavoir", "fuites"])
    in_title = _variant(base, id=f"{DIJON.siren}/c", slug="c", title="Fuites du lavoir")
    for dataset in (in_description, in_keywords, in_title):
        index.upsert(dataset)
    result = _search(index, q="lavoirs")
    assert _ids(result) == [f"{DIJON.siren}/c", f"{DIJON.siren}/b", f"{DIJON.siren}/a"]
    assert result.results[0].score > result.results[1].score > result.results[2].score > 0


def test_ties_go_to_the_most_recently_modified_then_to_the_id() -> None:
    index = SearchIndex()
    (base,) = [d for d in _published(DIJON) if d.slug == "comptages-velo"]
    for slug, hours in (("b", 1), ("a", 1), ("c", 2)):
        index.upsert(_variant(base, id=f"{DIJON.siren}/{slug}", slug=slug, modified=T0 + timedelta(hours=hours)))
    result = _search(index, q="vélo")
    assert len({hit.score for hit in result.results}) == 1
    assert _ids(result) == [f"{DIJON.siren}/c", f"{DIJON.siren}/a", f"{DIJON.siren}/b"]


def test_without_q_all_datasets_most_recent_first(index: SearchIndex) -> None:
    result = _search(index)
    assert result.total == 8
    modified = [hit.modified for hit in result.results]
    assert modified == sorted(modified, reverse=True)
    assert all(hit.score == 0 for hit in result.results)


def test_hit_fields(index: SearchIndex) -> None:
    (hit,) = _search(index, q="comptages", territory=[DIJON.siren]).results
    dataset = index.get(hit.id)
    assert dataset is not None
    assert hit.title == "Comptages vélo — Dijon Métropole"
    assert hit.publisher_name == "Dijon Métropole" and hit.territory == DIJON.siren and hit.node == "node-dijon"
    assert hit.formats == list(distribution_formats(dataset.metadata)) == ["CSV", "Parquet"]
    assert hit.uri == str(dataset.uri) and hit.licence == dataset.metadata.licence
    assert hit.status == "public" and hit.access == "open" and hit.theme == ["TRAN"]
    assert hit.modified == dataset.modified and hit.score > 0
    assert hit.description.startswith("Mesures journalières") and len(hit.description) <= 241


# ----------------------------------------------------------------------------------------------------- facets


def _facet(result: SearchResult, name: str) -> dict[str, int]:
    return {value.value: value.count for value in result.facets[name]}


def test_filters_are_or_within_a_facet_and_across_facets(index: SearchIndex) -> None:
    assert _search(index, territory=[DIJON.siren]).total == 4
    assert _search(index, territory=[DIJON.siren, BESANCON.siren]).total == 8
    assert _search(index, territory=[DIJON.siren], access=["open"]).total == 2
    assert _search(index, territory=[DIJON.siren], access=["open"], theme=["TRAN"]).total == 1
    assert _search(index, access=["open", "protected"], theme=["ENVI"]).total == 4
    assert _search(index, format=["API"]).total == 4
    assert _search(index, licence=["https://www.etalab.gouv.fr/licence-ouverte-open-licence/"]).total == 4
    assert _search(index, q="eau", status=["personal"]).total == 2
    assert _search(index, territory=["000000000"]).total == 0


def test_facets_are_disjunctive(index: SearchIndex) -> None:
    result = _search(index, q="eau", territory=[DIJON.siren], access=["open"])
    assert result.total == 1
    # The territory facet ignores the territory filter (the other territory stays selectable) but not the others.
    assert _facet(result, "territory") == {DIJON.siren: 1, BESANCON.siren: 1}
    assert _facet(result, "access") == {"open": 1, "protected": 1}
    assert _facet(result, "status") == {"public": 1}
    assert _facet(result, "theme") == {"ENVI": 1}
    assert _facet(result, "format") == {"CSV": 1, "Parquet": 1}
    labels = {value.value: value.label for value in result.facets["territory"]}
    assert labels == {DIJON.siren: "Dijon Métropole", BESANCON.siren: "Grand Besançon Métropole"}
    assert list(result.facets) == list(FACETS)


def test_facet_values_sorted_by_count_then_value(index: SearchIndex) -> None:
    index.upsert(_published(NORGE, 50)[0])
    result = _search(index)
    territories = [(value.value, value.count) for value in result.facets["territory"]]
    assert territories == [(DIJON.siren, 4), (BESANCON.siren, 4), (NORGE.siren, 1)]
    for values in result.facets.values():
        assert [(-v.count, v.value) for v in values] == sorted((-v.count, v.value) for v in values)


def test_a_selected_value_stays_listed_even_at_zero(index: SearchIndex) -> None:
    result = _search(index, q="vélo", status=["personal"], territory=["000000000"])
    assert result.total == 0
    assert _facet(result, "status")["personal"] == 0
    assert _facet(result, "territory")["000000000"] == 0


# ----------------------------------------------------------------------------------------------------- pages


def test_pagination(index: SearchIndex) -> None:
    everything = _ids(_search(index, per_page=100))
    pages = [_search(index, per_page=3, page=page) for page in (1, 2, 3)]
    assert [len(page.results) for page in pages] == [3, 3, 2]
    assert all(page.total == 8 and page.pages == 3 and page.per_page == 3 for page in pages)
    assert [hit for page in pages for hit in _ids(page)] == everything
    beyond = _search(index, per_page=3, page=4)
    assert beyond.results == [] and beyond.total == 8 and beyond.pages == 3 and beyond.page == 4
    ranked = _ids(_search(index, q="eau"))
    assert _ids(_search(index, q="eau", per_page=2, page=2)) == ranked[2:4]
    assert _search(index, q="eau", per_page=2, page=3).results == []


def test_query_validation() -> None:
    for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 101}, {"q": "x" * 501}, {"sort": "title"}):
        with pytest.raises(ValidationError):
            SearchQuery.model_validate(bad)
    with pytest.raises(ValidationError):
        SearchQuery.model_validate({"theme": ["NOPE"]})
    assert SearchQuery().per_page == 20 and SearchQuery().page == 1


# ----------------------------------------------------------------------------------------------------- revisions


def test_upsert_replaces_and_ignores_older_revisions(index: SearchIndex) -> None:
    (bikes,) = [d for d in _published(DIJON) if d.slug == "comptages-velo"]
    newer = _variant(
        bikes,
        revision=2,
        title="Comptages trottinettes — Dijon Métropole",
        description="Passages de trottinettes en libre-service.",
        keywords=["trottinettes"],
    )
    index.upsert(newer)
    assert len(index) == 8 and index.get(bikes.id) == newer
    assert _ids(_search(index, q="trottinette")) == [bikes.id]
    assert _ids(_search(index, q="vélo")) == ["242500361/comptages-velo"]  # the old text no longer matches

    index.upsert(bikes)  # revision 1 arrives late: ignored
    assert index.get(bikes.id) == newer and _search(index, q="trottinette").total == 1
    index.upsert(_variant(newer, modified=newer.modified - timedelta(seconds=1), title="Plus ancien"))
    assert index.get(bikes.id) == newer  # same revision, older modified: ignored
    latest = _variant(bikes, revision=2, modified=newer.modified + timedelta(seconds=1), title="Comptages rollers")
    index.upsert(latest)  # same revision, newer modified: replaces
    assert index.get(bikes.id) == latest and _search(index, q="rollers").total == 1
    assert _search(index, q="trottinette").total == 0 and len(index) == 8


def test_remove(index: SearchIndex) -> None:
    (bikes,) = [d for d in _published(DIJON) if d.slug == "comptages-velo"]
    assert index.remove(bikes.id, revision=0) is False  # a withdrawal of an older revision than the one held
    assert index.get(bikes.id) is not None
    assert index.remove(bikes.id, revision=1) is True
    assert index.get(bikes.id) is None and len(index) == 7
    assert _ids(_search(index, q="vélo")) == ["242500361/comptages-velo"]
    assert _search(index).total == 7 and sum(_facet(_search(index), "territory").values()) == 7
    assert index.remove(bikes.id) is False
    index.upsert(bikes)  # republished: back, in a reused slot
    assert len(index) == 8 and _search(index, q="vélo").total == 2


def test_removing_everything_leaves_an_empty_index(index: SearchIndex) -> None:
    for hit in _search(index, per_page=100).results:
        assert index.remove(hit.id)
    result = _search(index, q="eau")
    assert len(index) == 0 and result.total == 0 and all(values == [] for values in result.facets.values())


# ----------------------------------------------------------------------------------------------------- properties


def _corpus(rng: random.Random) -> list[PublishedDataset]:
    territories = [DIJON, BESANCON, NORGE, LOUE]
    datasets = []
    for t, territory in enumerate(territories):
        for dataset in _published(territory, t * 10):
            for copy in range(rng.randint(1, 3)):
                datasets.append(
                    _variant(
                        dataset,
                        id=f"{dataset.id}-{copy}",
                        slug=f"{dataset.slug}-{copy}",
                        modified=T0 + timedelta(minutes=rng.randrange(10_000)),
                        keywords=[*dataset.metadata.keywords, rng.choice(["vélos", "données", "réseau", "eaux"])],
                    )
                )
    return datasets


def _matches(dataset: PublishedDataset, query: SearchQuery, skip: str | None = None) -> bool:
    values = {
        "territory": {dataset.territory},
        "theme": {theme.value for theme in dataset.metadata.theme},
        "status": {dataset.metadata.status.value},
        "access": {dataset.metadata.access.value},
        "licence": {dataset.metadata.licence} - {None},
        "format": set(distribution_formats(dataset.metadata)),
    }
    for facet in FACETS:
        selected = {getattr(value, "value", value) for value in getattr(query, facet)}
        if facet != skip and selected and not selected & values[facet]:
            return False
    return True


def test_totals_and_facet_counts_agree_with_brute_force() -> None:
    rng = random.Random(7)
    datasets = _corpus(rng)
    index = SearchIndex()
    for dataset in datasets:
        index.upsert(dataset)
    choices: dict[str, list[str]] = {
        "theme": ["TRAN", "ENVI", "ECON"],
        "status": ["public", "personal", "general-interest"],
        "access": ["open", "restricted", "protected"],
        "format": ["CSV", "API"],
        "territory": [DIJON.siren, LOUE.siren],
    }
    for _ in range(200):
        query: dict[str, Any] = {"q": rng.choice([None, "eau", "vélo", "comptage", "données réseau", "21021"])}
        for facet, values in choices.items():
            if rng.random() < 0.35:
                query[facet] = rng.sample(values, rng.randint(1, 2))
        parsed = SearchQuery.model_validate(query)
        result = index.search(parsed)
        text = {hit.id for hit in index.search(SearchQuery(q=parsed.q, per_page=100)).results}
        assert result.total == sum(1 for d in datasets if d.id in text and _matches(d, parsed)), query
        if not parsed.territory:
            assert result.total == sum(value.count for value in result.facets["territory"]), query
        for facet in FACETS:  # disjunctive: a value's count is the total with only that value selected in its facet
            for value in result.facets[facet]:
                expected = sum(
                    1
                    for d in datasets
                    if d.id in text
                    and _matches(d, parsed, skip=facet)
                    and _matches(d, SearchQuery.model_validate({facet: [value.value]}))
                )
                assert value.count == expected, (query, facet, value)


# ----------------------------------------------------------------------------------------------------- threads


def test_a_writer_thread_and_reader_threads() -> None:
    index = SearchIndex()
    corpus = _corpus(random.Random(3))
    for dataset in corpus[: len(corpus) // 2]:
        index.upsert(dataset)
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0]

    def writer() -> None:
        rng = random.Random(5)
        revision = 1
        try:
            while not stop.is_set():
                dataset = rng.choice(corpus)
                if rng.random() < 0.3:
                    index.remove(dataset.id)
                else:
                    revision += 1
                    index.upsert(_variant(dataset, revision=revision))
        except BaseException as exc:
            errors.append(exc)

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                q = rng.choice([None, "eau", "vélo", "comptage réseau"])
                result = index.search(SearchQuery(q=q, per_page=5, page=rng.randint(1, 3)))
                assert result.total == sum(value.count for value in result.facets["territory"])
                assert len(result.results) <= 5
                order = [-hit.score if q else -hit.modified.timestamp() for hit in result.results]
                assert order == sorted(order)
                searches[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert not errors, errors[0]
    assert searches[0] > 50
    assert len(index) == _search(index).total == sum(_facet(_search(index), "territory").values())
