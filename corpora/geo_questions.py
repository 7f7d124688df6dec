"""Questions with gold answers over the geography corpus, split by entity.

Every city and country is assigned to one split (train, dev or test) by hashing its passage id;
a question is asked only about entities of a single split. So no passage that a test question is
about appears in any train question, and the same for dev.

The test and dev splits hold out the less famous entities: the 50 most populous countries and
every city of a million or more stay in train, so a small model cannot answer test questions from
memory and has to search. A capital follows its country's split, so "the population of the
capital of X" stays within one split.

A record:

    {"id": "geo-test-00010", "question": "How many people live in Bafang?",
     "answers": ["54505", "54,505"], "kind": "city_population", "entities": ["city:2235196"],
     "hops": 1, "needs_calculator": false}

`entities` are the passages a perfect searcher retrieves, `hops` how many of them are needed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal

from agentenv.corpora.geo_entities import City, Country, stable_index

SPLITS = ("train", "dev", "test")

# Shares of the entities that may be held out (see the module docstring), in percent.
TEST_PERCENT = {"country": 20, "city": 12}
DEV_PERCENT = {"country": 10, "city": 6}
ALWAYS_TRAIN_TOP_COUNTRIES = 50
ALWAYS_TRAIN_CITY_POPULATION = 1_000_000

# How many questions of each city-based kind to draw per split (country kinds use every country of
# the split instead: there are only 252).
CITY_QUESTIONS_PER_KIND = {"train": 1500, "dev": 50, "test": 120}
PAIR_QUESTIONS_PER_KIND = {"train": 1000, "dev": 40, "test": 80}

# Countries in GeoNames' list that no longer exist; questions about them would have no answer
# today. Their passages stay in the corpus.
DISSOLVED_COUNTRIES = {"AN", "CS"}  # Netherlands Antilles, Serbia and Montenegro

SEED = "agentenv-geo-v1"


def assign_splits(cities: list[City], countries: list[Country]) -> dict[str, str]:
    """passage id -> split, for every city and country."""
    populous = sorted(countries, key=lambda c: (-c.population, c.iso2))[:ALWAYS_TRAIN_TOP_COUNTRIES]
    always_train = {country.passage_id for country in populous}
    always_train |= {
        city.passage_id for city in cities if city.population >= ALWAYS_TRAIN_CITY_POPULATION
    }

    def split_of(passage_id: str, entity_type: str) -> str:
        if passage_id in always_train:
            return "train"
        percentile = stable_index(f"split:{passage_id}", 100)
        if percentile < TEST_PERCENT[entity_type]:
            return "test"
        if percentile < TEST_PERCENT[entity_type] + DEV_PERCENT[entity_type]:
            return "dev"
        return "train"

    splits = {country.passage_id: split_of(country.passage_id, "country") for country in countries}
    capital_country = {c.capital_city_id: c for c in countries if c.capital_city_id is not None}
    for city in cities:
        country = capital_country.get(city.geonameid)
        splits[city.passage_id] = (
            splits[country.passage_id] if country else split_of(city.passage_id, "city")
        )
    return splits


# ---------------------------------------------------------------------------------------------
# Answer forms
# ---------------------------------------------------------------------------------------------


def integer_forms(value: int) -> list[str]:
    """Every way a passage or a model may write an integer: "114394" and "114,394"."""
    forms = [str(value), f"{value:,}"]
    return list(dict.fromkeys(forms))


def decimal_forms(value: Decimal) -> list[str]:
    """A value rounded to two places, with and without trailing zeros: "2.30" and "2.3"."""
    forms = [f"{value:.2f}", f"{value:.1f}" if value == value.quantize(Decimal("0.1")) else None]
    if value == value.to_integral_value():
        forms.append(f"{value:.0f}")
    return list(dict.fromkeys(form for form in forms if form))


def round_half_up(value: Decimal, places: str = "1") -> Decimal:
    """Schoolbook rounding (2.5 -> 3), as the question text promises; Python's round() is
    banker's rounding (2.5 -> 2)."""
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)


# ---------------------------------------------------------------------------------------------
# Question kinds: each takes one split's entities and returns records without ids
# ---------------------------------------------------------------------------------------------


class SplitEntities:
    """The entities of one split that questions may be about, and lookups into all the others."""

    def __init__(
        self,
        name: str,
        cities: list[City],
        countries: list[Country],
        labels: dict[int, str],
        splits: dict[str, str],
    ):
        self.name = name
        self.labels = labels
        self._splits = splits
        # Only cities with an unambiguous label can be named in a question.
        self.cities = [
            city for city in cities if splits[city.passage_id] == name and city.geonameid in labels
        ]
        self.countries = [
            country
            for country in countries
            if splits[country.passage_id] == name and country.iso2 not in DISSOLVED_COUNTRIES
        ]
        self.country_by_code = {country.iso2: country for country in countries}
        self.city_by_id = {city.geonameid: city for city in cities}

    def holds(self, passage_id: str) -> bool:
        return self._splits[passage_id] == self.name

    def country_of(self, city: City) -> Country:
        return self.country_by_code[city.country_code]

    def names_country(self, city: City) -> bool:
        """Whether the city's label gives its country away ("Valencia, Spain")."""
        return self.labels[city.geonameid].endswith(", " + self.country_of(city).name)

    def can_hop_to_country(self, city: City) -> bool:
        """Whether a question may go from the city to its country: the label must not name the
        country, and the country must belong to this split too."""
        country = self.country_of(city)
        return (
            not self.names_country(city)
            and self.holds(country.passage_id)
            and country.iso2 not in DISSOLVED_COUNTRIES
        )


def record(kind: str, question: str, answers: list[str], entities: list[str], expression: str | None = None):
    """A question record; ``expression`` is the calculator input that answers it from the passages'
    numbers (an oracle's call, used by the SFT warm start)."""
    fields = {
        "question": question,
        "answers": answers,
        "kind": kind,
        "entities": entities,
        "hops": len(entities),
        "needs_calculator": expression is not None,
    }
    if expression is not None:
        fields["expression"] = expression
    return fields


def city_population(city: City, split: SplitEntities, rng: random.Random) -> dict:
    label = split.labels[city.geonameid]
    question = rng.choice(
        [
            f"What is the population of {label}?",
            f"How many people live in {label}?",
            f"How many inhabitants does {label} have?",
        ]
    )
    return record("city_population", question, integer_forms(city.population), [city.passage_id])


def city_timezone(city: City, split: SplitEntities, rng: random.Random) -> dict:
    label = split.labels[city.geonameid]
    question = rng.choice(
        [
            f"Which time zone is {label} in?",
            f"What is the IANA time zone of {label}?",
            f"In which time zone does {label} lie?",
        ]
    )
    return record("city_timezone", question, [city.timezone], [city.passage_id])


def city_country(city: City, split: SplitEntities, rng: random.Random) -> dict:
    label = split.labels[city.geonameid]
    question = rng.choice(
        [
            f"In which country is {label}?",
            f"Which country is {label} located in?",
            f"{label} lies in which country?",
        ]
    )
    name = split.country_of(city).name
    answers = list(dict.fromkeys([name, name.removeprefix("The ")]))  # "Netherlands" is right too
    return record("city_country", question, answers, [city.passage_id])


def city_country_currency(city: City, split: SplitEntities, rng: random.Random) -> dict:
    label = split.labels[city.geonameid]
    country = split.country_of(city)
    question = rng.choice(
        [
            f"What is the currency of the country in which {label} lies?",
            f"Which currency is used in the country where {label} is located?",
        ]
    )
    answers = [country.currency_code, *country.currency_names]
    return record("city_country_currency", question, answers, [city.passage_id, country.passage_id])


def city_country_capital(city: City, split: SplitEntities, rng: random.Random) -> dict:
    label = split.labels[city.geonameid]
    country = split.country_of(city)
    question = rng.choice(
        [
            f"What is the capital of the country in which {label} lies?",
            f"{label} is in a country; what is that country's capital?",
        ]
    )
    return record(
        "city_country_capital",
        question,
        list(country.capital_names),
        [city.passage_id, country.passage_id],
    )


def country_capital(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the capital of {country.name_in_sentence}?",
            f"Which city is the capital of {country.name_in_sentence}?",
        ]
    )
    return record("country_capital", question, list(country.capital_names), [country.passage_id])


def country_currency(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the currency of {country.name_in_sentence}?",
            f"Which currency is used in {country.name_in_sentence}?",
        ]
    )
    answers = [country.currency_code, *country.currency_names]
    return record("country_currency", question, answers, [country.passage_id])


def country_area(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the area of {country.name_in_sentence} in square kilometres?",
            f"How many square kilometres does {country.name_in_sentence} cover?",
        ]
    )
    return record("country_area", question, integer_forms(country.area_km2), [country.passage_id])


def country_continent(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"On which continent is {country.name_in_sentence}?",
            f"Which continent is {country.name_in_sentence} part of?",
        ]
    )
    return record("country_continent", question, [country.continent], [country.passage_id])


def capital_population(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    capital = split.city_by_id[country.capital_city_id]
    question = rng.choice(
        [
            f"What is the population of the capital of {country.name_in_sentence}?",
            f"How many people live in the capital city of {country.name_in_sentence}?",
        ]
    )
    return record(
        "capital_population",
        question,
        integer_forms(capital.population),
        [country.passage_id, capital.passage_id],
    )


def country_population_density(country: Country, split: SplitEntities, rng: random.Random) -> dict:
    density = round_half_up(Decimal(country.population) / Decimal(country.area_km2))
    question = (
        f"What is the population density of {country.name_in_sentence} in inhabitants per square kilometre "
        "(population divided by area), rounded to the nearest whole number?"
    )
    return record(
        "country_population_density",
        question,
        integer_forms(int(density)),
        [country.passage_id],
        expression=f"round({country.population} / {country.area_km2})",
    )


def population_difference(larger: City, smaller: City, split: SplitEntities, rng) -> dict:
    a, b = split.labels[larger.geonameid], split.labels[smaller.geonameid]
    question = rng.choice(
        [
            f"How many more inhabitants does {a} have than {b}?",
            f"By how many people does the population of {a} exceed that of {b}?",
        ]
    )
    return record(
        "population_difference",
        question,
        integer_forms(larger.population - smaller.population),
        [larger.passage_id, smaller.passage_id],
        expression=f"{larger.population} - {smaller.population}",
    )


def population_ratio(larger: City, smaller: City, split: SplitEntities, rng) -> dict:
    a, b = split.labels[larger.geonameid], split.labels[smaller.geonameid]
    ratio = round_half_up(Decimal(larger.population) / Decimal(smaller.population), "0.01")
    question = (
        f"What is the population of {a} divided by the population of {b}, rounded to two "
        "decimal places?"
    )
    return record(
        "population_ratio",
        question,
        decimal_forms(ratio),
        [larger.passage_id, smaller.passage_id],
        expression=f"round({larger.population} / {smaller.population}, 2)",
    )


# ---------------------------------------------------------------------------------------------
# Putting a split together
# ---------------------------------------------------------------------------------------------

CityQuestion = Callable[[City, SplitEntities, random.Random], dict]
CountryQuestion = Callable[[Country, SplitEntities, random.Random], dict]

# kind -> (which cities qualify, how to ask)
CITY_KINDS: dict[str, tuple[Callable[[City, SplitEntities], bool], CityQuestion]] = {
    "city_population": (lambda city, split: True, city_population),
    "city_timezone": (lambda city, split: True, city_timezone),
    "city_country": (lambda city, split: not split.names_country(city), city_country),
    "city_country_currency": (
        lambda city, split: (
            split.can_hop_to_country(city) and split.country_of(city).currency_code is not None
        ),
        city_country_currency,
    ),
    "city_country_capital": (
        lambda city, split: (
            split.can_hop_to_country(city) and bool(split.country_of(city).capital_names)
        ),
        city_country_capital,
    ),
}
COUNTRY_KINDS: dict[str, tuple[Callable[[Country, SplitEntities], bool], CountryQuestion]] = {
    "country_capital": (lambda country, split: bool(country.capital_names), country_capital),
    "country_currency": (
        lambda country, split: country.currency_code is not None,
        country_currency,
    ),
    "country_area": (lambda country, split: country.area_km2 > 0, country_area),
    "country_continent": (lambda country, split: True, country_continent),
    "capital_population": (
        # A capital follows its country's split (assign_splits), so this holds for every capital
        # in the corpus; checked anyway, the split guarantee must not rest on that rule alone.
        lambda country, split: (
            country.capital_city_id is not None and split.holds(f"city:{country.capital_city_id}")
        ),
        capital_population,
    ),
    "country_population_density": (
        # Densities that round to 0 (Greenland's 0.03) make a poor arithmetic question.
        lambda country, split: country.area_km2 > 0 and country.population >= country.area_km2,
        country_population_density,
    ),
}
PAIR_KINDS = {"population_difference": population_difference, "population_ratio": population_ratio}


def split_questions(entities: SplitEntities) -> list[dict]:
    """All questions of one split, shuffled, with ids."""
    name = entities.name
    rng = random.Random(f"{SEED}:{name}")
    questions = []
    for qualifies, ask in CITY_KINDS.values():
        eligible = [city for city in entities.cities if qualifies(city, entities)]
        chosen = rng.sample(eligible, min(CITY_QUESTIONS_PER_KIND[name], len(eligible)))
        questions += [ask(city, entities, rng) for city in chosen]
    for qualifies, ask in COUNTRY_KINDS.values():
        questions += [
            ask(country, entities, rng)
            for country in entities.countries
            if qualifies(country, entities)
        ]
    for ask_pair in PAIR_KINDS.values():
        pairs = min(PAIR_QUESTIONS_PER_KIND[name], len(entities.cities) // 2)
        chosen = rng.sample(entities.cities, 2 * pairs)
        for first, second in zip(chosen[::2], chosen[1::2], strict=True):
            if first.population == second.population:  # no "how many more" of zero
                continue
            larger, smaller = sorted((first, second), key=lambda city: -city.population)
            questions.append(ask_pair(larger, smaller, entities, rng))
    rng.shuffle(questions)
    return [
        {"id": f"geo-{name}-{index:05d}", **question} for index, question in enumerate(questions)
    ]


def build_questions(
    cities: list[City], countries: list[Country], labels: dict[int, str]
) -> dict[str, list[dict]]:
    """split name -> its question records."""
    splits = assign_splits(cities, countries)
    return {
        name: split_questions(SplitEntities(name, cities, countries, labels, splits))
        for name in SPLITS
    }
