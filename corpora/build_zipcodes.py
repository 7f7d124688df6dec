"""Build the US ZIP code corpus and its question splits, a second training domain beside geo.

    python -m agentenv.corpora.build_zipcodes       # needs: pip install -e '.[corpus-build]'

Reads the ZIP code database that ships offline inside ``zipcodes`` and the state facts that ship
inside ``us``, keeps a fixed sample of the active standard ZIP codes of the 50 states, and writes
into ``corpora/zipcodes/``:

- ``passages.jsonl.gz``: one ``{"id", "title", "text"}`` passage per state (``state:<postal
  abbreviation>``) and per kept ZIP code (``zip:<code>``), in templates of their own, unlike geo's
  and airports': a ZIP passage is an address-book entry (city, county, state, area codes, time zone,
  coordinates to four decimals) rather than an encyclopedia sentence;
- ``train.jsonl.gz``, ``dev.jsonl``, ``test.jsonl``: questions with gold answers, in the format of
  the geography splits.

ZIP codes are split by hashing their passage id, so no dev or test question is about a ZIP code a
train question is about. There are only 50 states, and two-hop questions go from a ZIP code of any
split to its state: the state passages are shared by all splits. The questions about states alone
(their capital, a difference of statehood years) are split by state, as geo splits countries.

Every choice is deterministic (the sample, templates and splits are picked by hashing passage ids,
sampling uses fixed seeds, inputs are sorted, gzip headers carry mtime 0), so a rebuild gives
identical bytes.

A question record:

    {"id": "zipcodes-test-00036",
     "question": "What is the capital of the state in which ZIP code 95251 lies?",
     "answers": ["Sacramento"], "kind": "zip_state_capital", "entities": ["zip:95251", "state:CA"],
     "hops": 2, "needs_calculator": false}
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from agentenv.corpora import ZIPCODES_DIR
from agentenv.corpora.build_geo import format_number, join_names, run_build, write_corpus
from agentenv.corpora.geo_entities import fold, stable_index
from agentenv.corpora.geo_questions import decimal_forms, integer_forms, record, round_half_up

SPLITS = ("train", "dev", "test")
SEED = "agentenv-zipcodes-v1"

# A few thousand ZIP codes keep the corpus as quick to index as airports'; the sample is the
# first KEPT_ZIP_CODES of the eligible ones ordered by a hash of their id.
KEPT_ZIP_CODES = 4000
# Shares of the ZIP codes and of the states held out, in percent (the rest are train).
TEST_PERCENT = {"zip": 10, "state": 20}
DEV_PERCENT = {"zip": 10, "state": 10}

# How many questions of each kind to draw per split. State kinds use every state of the split
# instead (there are only 50); state pair kinds draw up to STATE_PAIR_QUESTIONS_PER_KIND pairs.
ZIP_QUESTIONS_PER_KIND = {"train": 500, "dev": 25, "test": 25}
TWO_HOP_QUESTIONS_PER_KIND = {"train": 700, "dev": 40, "test": 40}
ZIP_PAIR_QUESTIONS_PER_KIND = {"train": 600, "dev": 40, "test": 40}
STATE_PAIR_QUESTIONS_PER_KIND = {"train": 250, "dev": 10, "test": 20}

# A passage lists this many of a ZIP code's other accepted city names at most (the source has
# up to 31).
MAX_OTHER_CITY_NAMES = 3
# Latitudes and longitudes that the source gives to fewer decimals were rounded away ("40", "-74");
# such ZIP codes are left out rather than written with a precision they do not have.
MIN_COORDINATE_DECIMALS = 2
FOUR_PLACES = Decimal("0.0001")
# Suffixes a county's name may be asked without: "Fulton County" and "Fulton" are both right.
COUNTY_SUFFIXES = (" County", " Parish", " Borough")


@dataclass(frozen=True)
class State:
    abbr: str  # the USPS abbreviation, "GA"
    name: str
    capital: str
    statehood_year: int  # for the original thirteen, the year the state ratified the Constitution
    fips: str  # two digits, "01"
    # Active standard ZIP codes in the source, all of them, not only those the corpus keeps.
    zip_count: int

    @property
    def passage_id(self) -> str:
        return f"state:{self.abbr}"

    @property
    def title(self) -> str:
        # Disambiguated as Wikipedia does, for all 50 alike: the ZIP code passages name the states
        # too ("New York, New York"), and so do geo's when the corpora are searched together (its
        # country "Georgia", its city "Salem, Oregon").
        return f"{self.name} (U.S. state)"


@dataclass(frozen=True)
class ZipCode:
    code: str  # five digits, leading zeros kept: "03046"
    city: str  # the USPS's preferred city name
    other_cities: tuple[str, ...]  # other city names the USPS accepts for it
    state: str  # the state's abbreviation
    county: str
    timezone: str
    area_codes: tuple[str, ...]
    latitude: Decimal  # to four decimals
    longitude: Decimal

    @property
    def passage_id(self) -> str:
        return f"zip:{self.code}"

    @property
    def title(self) -> str:
        return f"ZIP Code {self.code}"

    @property
    def county_names(self) -> list[str]:
        """ "Fulton County" -> ["Fulton County", "Fulton"]; "Carson City" stays one name."""
        names = [self.county]
        for suffix in COUNTY_SUFFIXES:
            if self.county.endswith(suffix):
                names.append(self.county.removesuffix(suffix))
        return names


# ---------------------------------------------------------------------------------------------
# Reading the sources
# ---------------------------------------------------------------------------------------------


def load_sources() -> tuple[list[State], list[ZipCode]]:
    """The 50 states sorted by abbreviation and the kept ZIP codes sorted by code."""
    # The source packages (the corpus-build extra) are imported where they are used, so that
    # importing this module for its dataclasses does not need them.
    import us
    import zipcodes

    raw_states = sorted(us.STATES, key=lambda state: state.abbr)
    abbreviations = {state.abbr for state in raw_states}
    raw_zips = sorted(
        (
            raw
            for raw in zipcodes.list_all()
            if raw["active"]
            and raw["zip_code_type"] == "STANDARD"
            and raw["state"] in abbreviations
        ),
        key=lambda raw: raw["zip_code"],
    )
    zip_counts = Counter(raw["state"] for raw in raw_zips)
    states = [
        State(
            abbr=raw.abbr,
            name=raw.name,
            capital=raw.capital,
            statehood_year=raw.statehood_year,
            fips=raw.fips,
            zip_count=zip_counts[raw.abbr],
        )
        for raw in raw_states
    ]
    eligible = [zip_code(raw) for raw in raw_zips if is_complete(raw)]
    kept = sorted(eligible, key=lambda z: (stable_index(f"keep:{z.passage_id}", 2**62), z.code))
    return states, sorted(kept[:KEPT_ZIP_CODES], key=lambda z: z.code)


def is_complete(raw: dict) -> bool:
    """Whether the source states every fact a passage gives: a county, a time zone, an area code
    and coordinates to MIN_COORDINATE_DECIMALS."""
    return bool(
        raw["county"].strip()
        and raw["timezone"].strip()
        and raw["area_codes"]
        and all(
            len(raw[axis].partition(".")[2]) >= MIN_COORDINATE_DECIMALS for axis in ("lat", "long")
        )
    )


def zip_code(raw: dict) -> ZipCode:
    city = raw["city"].strip()
    others = [name.strip() for name in raw["acceptable_cities"] if fold(name) != fold(city)]
    return ZipCode(
        code=raw["zip_code"],
        city=city,
        other_cities=tuple(dict.fromkeys(others))[:MAX_OTHER_CITY_NAMES],
        state=raw["state"],
        county=raw["county"].strip(),
        timezone=raw["timezone"].strip(),
        area_codes=tuple(sorted(raw["area_codes"])),
        latitude=Decimal(raw["lat"]).quantize(FOUR_PLACES),
        longitude=Decimal(raw["long"]).quantize(FOUR_PLACES),
    )


# ---------------------------------------------------------------------------------------------
# Passages
# ---------------------------------------------------------------------------------------------

# Several layouts, one picked per ZIP code by hashing its id, so that neither BM25 nor the policy
# can rely on one fixed shape. Half give signed decimal coordinates ("latitude 43.1025, longitude
# -71.6169"), half compass ones ("43.1025° N, 71.6169° W"); the latitude always comes first.
ZIP_TEMPLATES = [
    (
        "ZIP Code {code} is a standard ZIP code of {city}, {state} ({abbr}), in {county}. Phones "
        "there use {area_codes}. It lies at {coordinates} and keeps {timezone} time.{others}",
        " Mail for it may also be addressed to {names}.",
        False,
    ),
    (
        "ZIP {code}. Preferred city: {city}. {others}County: {county}. State: {state}. Time zone: "
        "{timezone}. Telephone {area_codes}. Location: {coordinates}.",
        "Other accepted names: {names}. ",
        True,
    ),
    (
        "Mail addressed to {code} goes to {city}, {abbr}, in {county}, {state}.{others} The ZIP "
        "code's centre is at {coordinates}; local clocks follow {timezone}, and phone numbers "
        "there take {area_codes}.",
        " The postal service also accepts {names} for it.",
        True,
    ),
    (
        "{city}, {abbr} {code}: a ZIP code in {county}, {state}, at {coordinates}, in the "
        "{timezone} time zone, served by {area_codes}.{others}",
        " Also accepted as the city: {names}.",
        False,
    ),
]


def format_area_codes(codes: tuple[str, ...]) -> str:
    """("603",) -> "area code 603"; ("201", "551") -> "area codes 201 and 551"."""
    return f"area code{'s' if len(codes) > 1 else ''} {join_names(codes)}"


def format_zip_coordinates(latitude: Decimal, longitude: Decimal, compass: bool) -> str:
    if not compass:
        return f"latitude {latitude}, longitude {longitude}"
    north_south = "N" if latitude >= 0 else "S"
    east_west = "E" if longitude >= 0 else "W"
    return f"{abs(latitude)}° {north_south}, {abs(longitude)}° {east_west}"


def zip_passage(zip_code: ZipCode, state: State) -> dict:
    template, others, compass = ZIP_TEMPLATES[stable_index(zip_code.passage_id, len(ZIP_TEMPLATES))]
    if zip_code.other_cities:
        others = others.format(names=join_names(zip_code.other_cities))
    else:
        others = ""
    text = template.format(
        code=zip_code.code,
        city=zip_code.city,
        state=state.name,
        abbr=state.abbr,
        county=zip_code.county,
        area_codes=format_area_codes(zip_code.area_codes),
        coordinates=format_zip_coordinates(zip_code.latitude, zip_code.longitude, compass),
        timezone=zip_code.timezone,
        others=others,
    )
    return {"id": zip_code.passage_id, "title": zip_code.title, "text": text}


# A state passage is one sentence (or field) per fact; half group the digits of the ZIP code count
# ("1,935"), half do not. Every style says "U.S. state" by the name, as the title does, "statehood"
# before the year and "standard ZIP codes" next to the count, so that a search for the state finds
# its passage and each fact is told by the same words whatever the layout.
STATE_STYLES = [
    (
        "{name} ({abbr}) is a U.S. state. Its capital is {capital}. It attained statehood in "
        "{year}. Its FIPS code is {fips}. It has {zip_count} standard ZIP codes in service.",
        True,
    ),
    (
        "U.S. state: {name}. Postal abbreviation: {abbr}. Capital: {capital}. Statehood: {year}. "
        "FIPS code: {fips}. Active standard ZIP codes: {zip_count}.",
        False,
    ),
    (
        "{name}, abbreviated {abbr}, is a U.S. state; statehood came in {year}. The capital city "
        "is {capital}. The postal service counts {zip_count} standard ZIP codes in {name}, and "
        "its FIPS state code is {fips}.",
        True,
    ),
]


def state_passage(state: State) -> dict:
    template, grouped = STATE_STYLES[stable_index(state.passage_id, len(STATE_STYLES))]
    text = template.format(
        name=state.name,
        abbr=state.abbr,
        capital=state.capital,
        year=state.statehood_year,
        fips=state.fips,
        zip_count=format_number(state.zip_count, grouped),
    )
    return {"id": state.passage_id, "title": state.title, "text": text}


def build_passages(states: list[State], zip_codes: list[ZipCode]) -> list[dict]:
    """State passages (by abbreviation), then ZIP code passages (by code)."""
    state_by_abbr = {state.abbr: state for state in states}
    return [state_passage(state) for state in states] + [
        zip_passage(zip_code, state_by_abbr[zip_code.state]) for zip_code in zip_codes
    ]


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


def split_of(passage_id: str) -> str:
    entity_type = passage_id.split(":")[0]
    percentile = stable_index(f"split:{passage_id}", 100)
    if percentile < TEST_PERCENT[entity_type]:
        return "test"
    if percentile < TEST_PERCENT[entity_type] + DEV_PERCENT[entity_type]:
        return "dev"
    return "train"


class SplitEntities:
    """The ZIP codes and states of one split that questions may be about, and every state, which
    two-hop questions reach from a ZIP code of any split."""

    def __init__(self, name: str, states: list[State], zip_codes: list[ZipCode]):
        self.name = name
        self.zip_codes = [z for z in zip_codes if split_of(z.passage_id) == name]
        self.states = [state for state in states if split_of(state.passage_id) == name]
        self.state_by_abbr = {state.abbr: state for state in states}

    def state_of(self, zip_code: ZipCode) -> State:
        return self.state_by_abbr[zip_code.state]

    def passage_text(self, zip_code: ZipCode) -> str:
        return zip_passage(zip_code, self.state_of(zip_code))["text"]


# ---------------------------------------------------------------------------------------------
# Questions: each kind takes its ZIP codes or states and returns a record without an id
# ---------------------------------------------------------------------------------------------


def zip_city(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the preferred city name of ZIP code {zip_code.code}?",
            f"Which city does ZIP code {zip_code.code} belong to?",
            f"ZIP code {zip_code.code} is the ZIP code of which city?",
        ]
    )
    return record("zip_city", question, [zip_code.city], [zip_code.passage_id])


def zip_county(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"Which county is ZIP code {zip_code.code} in?",
            f"In which county does ZIP code {zip_code.code} lie?",
            f"ZIP code {zip_code.code} belongs to which county?",
        ]
    )
    return record("zip_county", question, zip_code.county_names, [zip_code.passage_id])


def zip_state(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"In which U.S. state is ZIP code {zip_code.code}?",
            f"Which state does ZIP code {zip_code.code} belong to?",
        ]
    )
    return record("zip_state", question, [split.state_of(zip_code).name], [zip_code.passage_id])


def zip_timezone(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"Which time zone is ZIP code {zip_code.code} in?",
            f"What is the IANA time zone of ZIP code {zip_code.code}?",
            f"Local time in ZIP code {zip_code.code} follows which time zone?",
        ]
    )
    return record("zip_timezone", question, [zip_code.timezone], [zip_code.passage_id])


def zip_area_code(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the telephone area code of ZIP code {zip_code.code}?",
            f"Which area code do phones in ZIP code {zip_code.code} use?",
        ]
    )
    return record("zip_area_code", question, list(zip_code.area_codes), [zip_code.passage_id])


def zip_state_capital(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    state = split.state_of(zip_code)
    question = rng.choice(
        [
            f"ZIP code {zip_code.code} is in a state; what is the capital of that state?",
            f"What is the capital of the state in which ZIP code {zip_code.code} lies?",
        ]
    )
    return record(
        "zip_state_capital", question, [state.capital], [zip_code.passage_id, state.passage_id]
    )


def zip_statehood_year(zip_code: ZipCode, split: SplitEntities, rng: random.Random) -> dict:
    state = split.state_of(zip_code)
    question = rng.choice(
        [
            f"In which year did the state that ZIP code {zip_code.code} lies in attain statehood?",
            f"ZIP code {zip_code.code} is in a state; in what year did that state attain statehood?",
        ]
    )
    # A year is never written with a thousands separator.
    return record(
        "zip_statehood_year",
        question,
        [str(state.statehood_year)],
        [zip_code.passage_id, state.passage_id],
    )


def state_capital(state: State, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"What is the capital of the U.S. state of {state.name}?",
            f"Which city is the capital of {state.name}?",
        ]
    )
    return record("state_capital", question, [state.capital], [state.passage_id])


def statehood_year(state: State, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"In which year did {state.name} attain statehood?",
            f"When did {state.name} become a U.S. state?",
        ]
    )
    return record("statehood_year", question, [str(state.statehood_year)], [state.passage_id])


def state_zip_count(state: State, split: SplitEntities, rng: random.Random) -> dict:
    question = rng.choice(
        [
            f"How many standard ZIP codes does {state.name} have?",
            f"How many active standard ZIP codes are there in {state.name}?",
        ]
    )
    return record("state_zip_count", question, integer_forms(state.zip_count), [state.passage_id])


def latitude_difference(north: ZipCode, south: ZipCode, split: SplitEntities, rng) -> dict:
    difference = round_half_up(north.latitude - south.latitude, "0.01")
    question = (
        f"How many degrees of latitude farther north is ZIP code {north.code} than ZIP code "
        f"{south.code}, rounded to two decimal places?"
    )
    return record(
        "latitude_difference",
        question,
        decimal_forms(difference),
        [north.passage_id, south.passage_id],
        expression=f"round({north.latitude} - {south.latitude}, 2)",
    )


def statehood_difference(later: State, earlier: State, split: SplitEntities, rng) -> dict:
    question = rng.choice(
        [
            f"How many years after {earlier.name} did {later.name} attain statehood?",
            f"How many years passed between the statehood of {earlier.name} and that of {later.name}?",
        ]
    )
    return record(
        "statehood_difference",
        question,
        integer_forms(later.statehood_year - earlier.statehood_year),
        [later.passage_id, earlier.passage_id],
        expression=f"{later.statehood_year} - {earlier.statehood_year}",
    )


def zip_count_difference(larger: State, smaller: State, split: SplitEntities, rng) -> dict:
    question = rng.choice(
        [
            f"How many more standard ZIP codes does {larger.name} have than {smaller.name}?",
            f"By how many does the number of standard ZIP codes of {larger.name} exceed that of "
            f"{smaller.name}?",
        ]
    )
    return record(
        "zip_count_difference",
        question,
        integer_forms(larger.zip_count - smaller.zip_count),
        [larger.passage_id, smaller.passage_id],
        expression=f"{larger.zip_count} - {smaller.zip_count}",
    )


def names_capital(zip_code: ZipCode, split: SplitEntities) -> bool:
    """Whether the ZIP code's passage names its state's capital (a ZIP code of Atlanta, or of
    Jackson County in Mississippi): there the first passage would give the two-hop answer away."""
    return fold(split.state_of(zip_code).capital) in fold(split.passage_text(zip_code))


def north_first(a: ZipCode, b: ZipCode) -> tuple[ZipCode, ZipCode] | None:
    """(north, south); None where the difference rounds to 0.00, or ends in an exact half at the
    third decimal (1.125): there the calculator's round() (to even, on a float) and the schoolbook
    rounding the question promises may differ."""
    north, south = (a, b) if a.latitude > b.latitude else (b, a)
    thousandths = (north.latitude - south.latitude) * 1000
    ties = thousandths == thousandths.to_integral_value() and thousandths % 10 == 5
    if ties or round_half_up(thousandths / 1000, "0.01") == 0:
        return None
    return north, south


def later_first(a: State, b: State) -> tuple[State, State] | None:
    """(later, earlier) by statehood year; None for two states of the same year."""
    if a.statehood_year == b.statehood_year:
        return None
    return (a, b) if a.statehood_year > b.statehood_year else (b, a)


def more_zip_codes_first(a: State, b: State) -> tuple[State, State] | None:
    if a.zip_count == b.zip_count:
        return None
    return (a, b) if a.zip_count > b.zip_count else (b, a)


ZipQuestion = Callable[[ZipCode, SplitEntities, random.Random], dict]
StateQuestion = Callable[[State, SplitEntities, random.Random], dict]

# kind -> (which ZIP codes qualify, how to ask, how many per split)
ZIP_KINDS: dict[str, tuple[Callable[[ZipCode, SplitEntities], bool], ZipQuestion, dict]] = {
    "zip_city": (lambda z, split: True, zip_city, ZIP_QUESTIONS_PER_KIND),
    "zip_county": (lambda z, split: True, zip_county, ZIP_QUESTIONS_PER_KIND),
    "zip_state": (lambda z, split: True, zip_state, ZIP_QUESTIONS_PER_KIND),
    "zip_timezone": (lambda z, split: True, zip_timezone, ZIP_QUESTIONS_PER_KIND),
    # "The area code" is one only where the ZIP code has one.
    "zip_area_code": (
        lambda z, split: len(z.area_codes) == 1,
        zip_area_code,
        ZIP_QUESTIONS_PER_KIND,
    ),
    "zip_state_capital": (
        lambda z, split: not names_capital(z, split),
        zip_state_capital,
        TWO_HOP_QUESTIONS_PER_KIND,
    ),
    "zip_statehood_year": (lambda z, split: True, zip_statehood_year, TWO_HOP_QUESTIONS_PER_KIND),
}
STATE_KINDS: dict[str, StateQuestion] = {
    "state_capital": state_capital,
    "statehood_year": statehood_year,
    "state_zip_count": state_zip_count,
}
# kind -> (the pair in the order the question names it, None where a pair does not qualify; how
# to ask)
ZIP_PAIR_KINDS = {"latitude_difference": (north_first, latitude_difference)}
STATE_PAIR_KINDS = {
    "statehood_difference": (later_first, statehood_difference),
    "zip_count_difference": (more_zip_codes_first, zip_count_difference),
}


# ---------------------------------------------------------------------------------------------
# Putting a split together
# ---------------------------------------------------------------------------------------------


def split_questions(entities: SplitEntities) -> list[dict]:
    """All questions of one split, shuffled, with ids."""
    name = entities.name
    rng = random.Random(f"{SEED}:{name}")
    questions = []
    for qualifies, ask, per_kind in ZIP_KINDS.values():
        eligible = [z for z in entities.zip_codes if qualifies(z, entities)]
        chosen = rng.sample(eligible, min(per_kind[name], len(eligible)))
        questions += [ask(z, entities, rng) for z in chosen]
    for ask in STATE_KINDS.values():
        questions += [ask(state, entities, rng) for state in entities.states]
    for order, ask_pair in ZIP_PAIR_KINDS.values():
        pairs = min(ZIP_PAIR_QUESTIONS_PER_KIND[name], len(entities.zip_codes) // 2)
        chosen = rng.sample(entities.zip_codes, 2 * pairs)
        for first, second in zip(chosen[::2], chosen[1::2], strict=True):
            if (ordered := order(first, second)) is not None:
                questions.append(ask_pair(*ordered, entities, rng))
    for order, ask_pair in STATE_PAIR_KINDS.values():
        # Every pair of the split's states once, a sample of them asked.
        states = entities.states
        pairs = [
            ordered
            for i, first in enumerate(states)
            for second in states[i + 1 :]
            if (ordered := order(first, second)) is not None
        ]
        chosen = rng.sample(pairs, min(STATE_PAIR_QUESTIONS_PER_KIND[name], len(pairs)))
        questions += [ask_pair(*pair, entities, rng) for pair in chosen]
    rng.shuffle(questions)
    return [
        {"id": f"zipcodes-{name}-{index:05d}", **question}
        for index, question in enumerate(questions)
    ]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def build(output_dir: Path) -> list[str]:
    """Write the corpus and the question splits into `output_dir`; one summary line per file."""
    states, zip_codes = load_sources()
    splits = {split: split_questions(SplitEntities(split, states, zip_codes)) for split in SPLITS}
    return write_corpus(output_dir, build_passages(states, zip_codes), splits)


if __name__ == "__main__":
    run_build(build, ZIPCODES_DIR)
