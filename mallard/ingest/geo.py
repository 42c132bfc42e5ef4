"""Client location from the IP address, which is then forgotten.

By default the country comes from ``geoip2fast``'s bundled data file (derived
from MaxMind GeoLite2, CC BY-SA 4.0), which works offline with no set-up.
With ``geoip_db`` pointing at a MaxMind-format database (``.mmdb``: GeoLite2
or GeoIP2 City/Country, DB-IP lite, …) that database is used instead and also
gives region and city.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import maxminddb
from geoip2fast import GeoIP2Fast


class Location(NamedTuple):
    country_code: str | None
    region: str | None = None
    city: str | None = None


UNKNOWN = Location(None)


class GeoLookup:
    """Maps an IP address to a :class:`Location`; private addresses are unknown."""

    def __init__(self, mmdb_path: Path | None = None) -> None:
        self._reader = maxminddb.open_database(str(mmdb_path)) if mmdb_path else None
        self._fallback = (
            None
            if self._reader
            else GeoIP2Fast(geoip2fast_data_file="geoip2fast-ipv6.dat.gz", verbose=False)
        )

    def locate(self, ip: str | None) -> Location:
        if not ip:
            return UNKNOWN
        if self._reader is not None:
            return self._locate_mmdb(ip)
        assert self._fallback is not None
        code = self._fallback.lookup(ip).country_code
        return Location(code) if len(code) == 2 and code.isalpha() else UNKNOWN

    def _locate_mmdb(self, ip: str) -> Location:
        assert self._reader is not None
        try:
            record = self._reader.get(ip)
        except ValueError:
            return UNKNOWN
        if not isinstance(record, dict):
            return UNKNOWN
        country = _get(record, "country", "iso_code")
        subdivisions = record.get("subdivisions") or [{}]
        region = _get(subdivisions[0], "names", "en") if isinstance(subdivisions, list) else None
        return Location(country, region, _get(record, "city", "names", "en"))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def _get(record: Any, *keys: str) -> str | None:
    for key in keys:
        if not isinstance(record, dict):
            return None
        record = record.get(key)
    return record if isinstance(record, str) else None
