"""Build the airports transfer corpus and its evaluation questions.

    python -m agentenv.corpora.build_airports       # needs: pip install -e '.[corpus-build]'

Reads the airport table that ships offline inside ``airportsdata`` (a fork of mwgg/Airports, keyed
by ICAO code), keeps the airports that have an ICAO and an IATA code, a name and a city, adds
country names from ``pycountry``, and writes into ``corpora/airports/``:

- ``passages.jsonl.gz``: one ``{"id", "title", "text"}`` passage per airport (``airport:<ICAO>``);
- ``dev.jsonl``, ``test.jsonl``: questions with gold answers, in the format of the geography splits.

This is a held-out domain: nothing here is used in training, so there is no train split. Every
choice is deterministic (templates and splits are picked by hashing the passage id, sampling uses
fixed seeds, inputs are sorted, gzip headers carry mtime 0), so a rebuild gives identical bytes.

A question record:

    {"id": "airports-test-00002",
     "question": "At what elevation in feet does Hurghada International Airport lie?",
     "answers": ["52"], "kind": "airport_elevation", "entities": ["airport:HEGN"], "hops": 1,
     "needs_calculator": false}
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from agentenv.corpora import AIRPORTS_DIR
from agentenv.corpora.build_geo import format_coordinates, format_number, run_build, write_corpus
from agentenv.corpora.geo_entities import fold, stable_index, with_article
from agentenv.corpora.geo_questions import decimal_forms, integer_forms, record, round_half_up

SPLITS = ("dev", "test")
DEV_PERCENT = 20  # of the airports that questions may name; the rest are test
QUESTIONS_PER_KIND = {"dev": 12, "test": 50}
SEED = "agentenv-airports-v1"
ICAO_CODE = re.compile(r"[A-Z]{4}")

# pycountry names every code the data uses except Kosovo's user-assigned XK.
COUNTRY_NAMES_OUTSIDE_PYCOUNTRY = {"XK": "Kosovo"}
# pycountry's ISO names invert word order ("Congo, The Democratic Republic of the"); where it has
# no `common_name` for such a country, these read as prose do.
COUNTRY_NAMES_IN_PROSE = {
    "CD": "Democratic Republic of the Congo",
    "FM": "Micronesia",
    "PS": "Palestine",
    "VG": "British Virgin Islands",
    "VI": "United States Virgin Islands",
}


@dataclass(frozen=True)
class Airport:
    icao: str
    iata: str
    name: str
    # As airportsdata writes it; a few add the island ("Balikpapan, Borneo Island").
    city: str
    subdivision: str | None
    country: str  # full name, e.g. "Russian Federation"
    # The source gives feet with one decimal for some US fields; passages state whole feet.
    elevation_ft: int
    latitude: float
    longitude: float
    timezone: str

    @property
    def passage_id(self) -> str:
        return f"airport:{self.icao}"

    @property
    def city_names(self) -> list[str]:
        """ "Balikpapan, Borneo Island" -> ["Balikpapan, Borneo Island", "Balikpapan"]."""
        return list(dict.fromkeys([self.city, self.city.split(",")[0].strip()]))


# ---------------------------------------------------------------------------------------------
# Reading the source
# ---------------------------------------------------------------------------------------------


def country_name(code: str) -> str:
    import pycountry

    if code in COUNTRY_NAMES_OUTSIDE_PYCOUNTRY:
        return COUNTRY_NAMES_OUTSIDE_PYCOUNTRY[code]
    country = pycountry.countries.get(alpha_2=code)
    return getattr(country, "common_name", None) or COUNTRY_NAMES_IN_PROSE.get(code) or country.name


def load_airports() -> list[Airport]:
    """Airports with an ICAO and an IATA code, a name and a city, sorted by ICAO code.

    airportsdata keys airports without an ICAO location indicator by a pseudo-ICAO identifier,
    mostly an FAA or Transport Canada one with digits ("07FA"); those few hundred fields are left
    out, so that every passage's "ICAO code" is one. Airports whose name another one shares (two
    "Newcastle Airport", accents and case ignored) are left out too: a question naming one would
    be about either.
    """
    import airportsdata

    raw_airports = [
        raw
        for _, raw in sorted(airportsdata.load().items())
        if ICAO_CODE.fullmatch(raw["icao"])
        and raw["iata"]
        and raw["name"].strip()
        and raw["city"].strip()
    ]
    name_counts = Counter(fold(raw["name"].strip()) for raw in raw_airports)
    return [
        Airport(
            icao=raw["icao"],
            iata=raw["iata"],
            name=raw["name"].strip(),
            city=raw["city"].strip(),
            subdivision=raw["subd"].strip() or None,
            country=country_name(raw["country"]),
            elevation_ft=int(round_half_up(Decimal(str(raw["elevation"])))),
            latitude=raw["lat"],
            longitude=raw["lon"],
            timezone=raw["tz"],
        )
        for raw in raw_airports
        if name_counts[fold(raw["name"].strip())] == 1
    ]


# ---------------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------------

# Several phrasings, one picked per airport by hashing its id, so that neither BM25 nor the policy
# can rely on one fixed sentence. Half group the digits of numbers ("5,958"), half do not.
AIRPORT_TEMPLATES = [
    (
        "{name} (IATA: {iata}, ICAO: {icao}) is an airport serving {city}, {place}. It lies at an "
        "elevation of {elevation} feet, at {coordinates}. Local time follows the {timezone} time "
        "zone.",
        True,
    ),
    (
        "{name} is located in {place} and serves {city}. Its IATA code is {iata} and its ICAO "
        "code is {icao}. Elevation: {elevation} ft. Coordinates: {coordinates}. Time zone: "
        "{timezone}.",
        False,
    ),
    (
        "Serving {city} in {place}, {name} has an elevation of {elevation} feet and lies at "
        "{coordinates}. Airport codes: IATA {iata}, ICAO {icao}. It keeps {timezone} time.",
        True,
    ),
    (
        "{name} ({icao}/{iata}): the airport of {city}, {place}, at {coordinates} and "
        "{elevation} feet of elevation, in the {timezone} time zone.",
        False,
    ),
]


def airport_passage(airport: Airport) -> dict:
    template, grouped = AIRPORT_TEMPLATES[stable_index(airport.passage_id, len(AIRPORT_TEMPLATES))]
    country = with_article(airport.country)
    # "serving Adana, Adana, Türkiye" says the subdivision once too often.
    if airport.subdivision and fold(airport.subdivision) != fold(airport.city):
        place = f"{airport.subdivision}, {country}"
    else:
        place = country
    text = template.format(
        name=airport.name,
        iata=airport.iata,
        icao=airport.icao,
        city=airport.city,
        place=place,
        elevation=format_number(airport.elevation_ft, grouped),
        coordinates=format_coordinates(airport.latitude, airport.longitude),
        timezone=airport.timezone,
    )
    # Titles are airport names, as Wikipedia's are ("Kipnuk Airport").
    return {"id": airport.passage_id, "title": airport.name, "text": text}


# ---------------------------------------------------------------------------------------------
# Questions: each kind takes its airports and returns a record without an id
# ---------------------------------------------------------------------------------------------


def airport_city(airport: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"Which city does {airport.name} serve?",
            f"Which city is served by {airport.name}?",
            f"{airport.name} serves which city?",
        ]
    )
    return record("airport_city", question, airport.city_names, [airport.passage_id])


def airport_country(airport: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"In which country is {airport.name}?",
            f"Which country is {airport.name} located in?",
            f"{airport.name} lies in which country?",
        ]
    )
    return record("airport_country", question, [airport.country], [airport.passage_id])


def airport_timezone(airport: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"Which time zone is {airport.name} in?",
            f"What is the IANA time zone of {airport.name}?",
            f"In which time zone does {airport.name} lie?",
        ]
    )
    return record("airport_timezone", question, [airport.timezone], [airport.passage_id])


def airport_elevation(airport: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the elevation of {airport.name} in feet?",
            f"How high above sea level is {airport.name}, in feet?",
            f"At what elevation in feet does {airport.name} lie?",
        ]
    )
    return record(
        "airport_elevation", question, integer_forms(airport.elevation_ft), [airport.passage_id]
    )


def airport_iata(airport: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the IATA code of {airport.name}?",
            f"Which IATA airport code does {airport.name} have?",
        ]
    )
    return record("airport_iata", question, [airport.iata], [airport.passage_id])


def higher_airport(higher: Airport, lower: Airport, rng: random.Random) -> dict:
    # Either order in the text, so "the first one" is no answer.
    a, b = rng.sample([higher.name, lower.name], 2)
    question = rng.choice(
        [
            f"Which airport lies at a higher elevation, {a} or {b}?",
            f"Is {a} or {b} higher above sea level?",
        ]
    )
    return record("higher_airport", question, [higher.name], [higher.passage_id, lower.passage_id])


def elevation_difference(higher: Airport, lower: Airport, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"How many feet higher is {higher.name} than {lower.name}?",
            f"By how many feet does the elevation of {higher.name} exceed that of {lower.name}?",
        ]
    )
    return record(
        "elevation_difference",
        question,
        integer_forms(higher.elevation_ft - lower.elevation_ft),
        [higher.passage_id, lower.passage_id],
        expression=f"{higher.elevation_ft} - {lower.elevation_ft}",
    )


def elevation_ratio(higher: Airport, lower: Airport, rng: random.Random) -> dict:
    ratio = round_half_up(Decimal(higher.elevation_ft) / Decimal(lower.elevation_ft), "0.01")
    question = (
        f"What is the elevation of {higher.name} divided by the elevation of {lower.name}, "
        "rounded to two decimal places?"
    )
    return record(
        "elevation_ratio",
        question,
        decimal_forms(ratio),
        [higher.passage_id, lower.passage_id],
        expression=f"round({higher.elevation_ft} / {lower.elevation_ft}, 2)",
    )


def names_city(airport: Airport) -> bool:
    """Whether the name gives the city away ("Adana Airport" serves Adana)."""
    return any(fold(city) in fold(airport.name) for city in airport.city_names)


def names_country(airport: Airport) -> bool:
    return fold(airport.country) in fold(airport.name)


def ties_on_rounding(higher: Airport, lower: Airport) -> bool:
    """Whether the ratio ends in an exact half at the third decimal (1.125): there the calculator's
    round() (to even, on a float) and the schoolbook rounding the question promises may differ."""
    thousandths = Decimal(higher.elevation_ft * 1000) / Decimal(lower.elevation_ft)
    return thousandths % 10 == 5


# kind -> (which airports qualify, how to ask). Elevations of 0 or below are left to the passages:
# 0 often stands for "unknown" in the source, and a difference with a negative term reads badly.
SINGLE_KINDS: dict[str, tuple[Callable[[Airport], bool], Callable[..., dict]]] = {
    "airport_city": (lambda airport: not names_city(airport), airport_city),
    "airport_country": (lambda airport: not names_country(airport), airport_country),
    "airport_timezone": (lambda airport: True, airport_timezone),
    "airport_elevation": (lambda airport: airport.elevation_ft > 0, airport_elevation),
    "airport_iata": (lambda airport: True, airport_iata),
}
# kind -> (which (higher, lower) pairs qualify, how to ask)
PAIR_KINDS: dict[str, tuple[Callable[[Airport, Airport], bool], Callable[..., dict]]] = {
    "higher_airport": (lambda higher, lower: True, higher_airport),
    "elevation_difference": (lambda higher, lower: True, elevation_difference),
    "elevation_ratio": (lambda higher, lower: not ties_on_rounding(higher, lower), elevation_ratio),
}


def higher_first(a: Airport, b: Airport) -> tuple[Airport, Airport]:
    return (a, b) if a.elevation_ft > b.elevation_ft else (b, a)


def split_of(airport: Airport) -> str:
    return "dev" if stable_index(f"split:{airport.passage_id}", 100) < DEV_PERCENT else "test"


def split_questions(name: str, airports: list[Airport]) -> list[dict]:
    """All questions of one split, shuffled, with ids. Each airport is named by one question at
    most, so no question's text hints at another's answer."""
    rng = random.Random(f"{SEED}:{name}")
    unused = [airport for airport in airports if split_of(airport) == name]
    rng.shuffle(unused)
    wanted = QUESTIONS_PER_KIND[name]
    questions = []

    def take(qualifies: Callable[[Airport], bool]) -> Airport:
        chosen = next(airport for airport in unused if qualifies(airport))
        unused.remove(chosen)
        return chosen

    def take_pair(qualifies: Callable[[Airport, Airport], bool]) -> tuple[Airport, Airport]:
        first = take(lambda airport: airport.elevation_ft > 0)

        def is_partner(airport: Airport) -> bool:
            return (
                airport.elevation_ft > 0
                and airport.elevation_ft != first.elevation_ft
                and qualifies(*higher_first(first, airport))
            )

        return higher_first(first, take(is_partner))

    for qualifies, ask in SINGLE_KINDS.values():
        questions += [ask(take(qualifies), rng) for _ in range(wanted)]
    for qualifies, ask_pair in PAIR_KINDS.values():
        questions += [ask_pair(*take_pair(qualifies), rng) for _ in range(wanted)]
    rng.shuffle(questions)
    return [
        {"id": f"airports-{name}-{index:05d}", **question}
        for index, question in enumerate(questions)
    ]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def build(output_dir: Path) -> list[str]:
    """Write the corpus and the question splits into `output_dir`; one summary line per file."""
    airports = load_airports()
    passages = [airport_passage(airport) for airport in airports]
    return write_corpus(output_dir, passages, {split: split_questions(split, airports) for split in SPLITS})


if __name__ == "__main__":
    run_build(build, AIRPORTS_DIR)
