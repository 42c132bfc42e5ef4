"""Settings: built-in defaults < TOML file < environment < command-line flags.

Every setting is declared once in ``SETTINGS`` with its parser. A value that does
not parse raises :class:`ConfigError` naming the setting, which the CLI turns
into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import maxminddb

from mallard.auth.passwords import check_new_password
from mallard.ingest.validation import NUMBER_TEXT, SITE_ID_PATTERN, SITE_ID_RULE

ENV_PREFIX = "MALLARD_"
TEN_YEARS = 10 * 365 * 86400.0
WHOLE_NUMBER_TEXT = re.compile(r"-?[0-9]+")
MAX_CONFIG_BYTES = 1_000_000  # a settings file; more is not one

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A setting has a value Mallard cannot use; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./data")
    secret: str | None = None
    site_ids: tuple[str, ...] = ()
    sites: tuple[tuple[str, str], ...] = ()  # (site id, its default timezone)
    filter_bots: bool = True
    rate_limit: float = 0.0
    rate_burst: float | None = None
    flush_count: int = 1000
    flush_interval: float = 60.0
    queue_size: int = 10_000
    durability: Literal["wal", "memory"] = "wal"
    compaction_interval: float = 3600.0
    retention_days: int = 0  # 0 = keep everything
    query_cache_entries: int = 256
    query_memory_mb: int = 400
    workers: int = 1
    shutdown_timeout: float = 30.0
    trusted_proxies: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    admin_password: str | None = None
    cookie_secure: bool = False
    session_ttl: float = 7 * 86400.0
    login_max_failures: int = 5
    login_lockout: float = 900.0
    log_format: str = "text"
    geoip_db: Path | None = None
    metrics_token: str | None = None
    gdpr_mode: bool = False
    strip_referrer_query: bool = False
    round_timestamps: bool = False
    drop_versions: bool = False
    drop_screen_size: bool = False
    country_only: bool = False

    def site_timezone(self, site_id: object) -> str:
        """The site's default query timezone from ``sites``; UTC otherwise."""
        return next((zone for site, zone in self.sites if site == site_id), "UTC")

    @property
    def effective_rate_burst(self) -> float:
        """The token bucket's size: ``rate_burst`` when set, else ``rate_limit``."""
        return self.rate_burst if self.rate_burst is not None else self.rate_limit


# --- value parsers: each takes a TOML value or a string, returns the typed value ---


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    if "\0" in value:
        raise ValueError("must not hold a NUL character")
    return value


def _optional_text(value: Any) -> str | None:
    text = _text(value)
    return text or None


def _admin_password(value: Any) -> str | None:
    """A password the login accepts: the rules of a new one (8 to 1,024 characters)."""
    text = _optional_text(value)
    return None if text is None else check_new_password(text)


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        text = str(value).strip()  # ASCII digits only: int() also takes 1_0 and other scripts'
        if not isinstance(value, int) and not WHOLE_NUMBER_TEXT.fullmatch(text):
            raise ValueError(f"expected a whole number, got {value!r}")
        number = value if isinstance(value, int) else int(text)
        if number < minimum or (maximum is not None and number > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be {bounds}, got {number}")
        return number

    return parse


def _number(
    minimum: float, *, inclusive: bool = True, maximum: float | None = None
) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        text = str(value).strip()  # as JSON writes numbers: float() also takes 1_0, inf...
        if not isinstance(value, int | float) and not NUMBER_TEXT.fullmatch(text):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value) if isinstance(value, int | float) else float(text)
        except OverflowError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        if number < minimum or (not inclusive and number == minimum):
            raise ValueError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got {number:g}")
        if maximum is not None and number > maximum:
            raise ValueError(f"must be at most {maximum:g}, got {number:g}")
        return number

    return parse


def _optional_number(minimum: float) -> Callable[[Any], float | None]:
    parse = _number(minimum)

    def parse_optional(value: Any) -> float | None:
        if isinstance(value, str) and not value.strip():
            return None
        return parse(value)

    return parse_optional


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true/false/1/0/yes/no, got {value!r}")


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError(f"expected a list of strings or a comma-separated string, got {value!r}")


def _site_id(site: Any) -> str:
    if not isinstance(site, str) or not SITE_ID_PATTERN.fullmatch(site):
        raise ValueError(f"{site!r} is not a valid site id ({SITE_ID_RULE})")
    return site.lower()


def _site_ids(value: Any) -> tuple[str, ...]:
    return tuple(_site_id(site) for site in _string_list(value))


def _sites(value: Any) -> tuple[tuple[str, str], ...]:
    """``{"example.com" = {timezone = "Europe/Berlin"}}`` in TOML, ``a.com=Europe/Berlin,b.org``."""
    if isinstance(value, dict):
        entries = []
        for site, options in value.items():
            if isinstance(options, dict) and set(options) <= {"timezone"}:
                entries.append((site, options.get("timezone", "UTC")))
            else:
                raise ValueError(f'site {site!r}: expected {{ timezone = "Area/City" }}')
    else:
        entries = [(site, zone or "UTC") for site, _, zone in map(_split_site, _string_list(value))]
    sites = []
    known = zoneinfo.available_timezones() | {"UTC"} if entries else set()
    for site, zone in entries:
        if not isinstance(zone, str) or zone not in known:
            raise ValueError(f"site {site!r}: {zone!r} is not an IANA time zone like Europe/Berlin")
        site_id = _site_id(site)
        if any(site_id == listed for listed, _ in sites):
            raise ValueError(f"site {site_id!r} is listed twice (site ids ignore case)")
        sites.append((site_id, zone))
    return tuple(sites)


def _split_site(entry: str) -> tuple[str, str, str]:
    site, equals, zone = entry.partition("=")
    return site.strip(), equals, zone.strip()


def _networks(value: Any) -> tuple[Network, ...]:
    networks = []
    for item in _string_list(value):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def _path(value: Any) -> Path:
    text = _text(value).strip()
    if not text:
        raise ValueError("must not be empty")
    try:
        return Path(text).expanduser()
    except RuntimeError as error:  # ~someone who has no home here
        raise ValueError(f"cannot expand {text!r}: {error}") from None


def _existing_file(value: Any) -> Path | None:
    if isinstance(value, str) and not value.strip():
        return None
    path = _path(value)
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a readable file")
    return path


def _geoip_database(value: Any) -> Path | None:
    path = _existing_file(value)
    if path is not None:
        try:
            maxminddb.open_database(str(path)).close()
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as error:
            raise ValueError(f"{str(path)!r} is not a MaxMind database: {error}") from None
    return path


def _workers(value: Any) -> int:
    """A process count, or ``auto`` for one per core."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return _integer(1, 256)(value)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value).strip().lower()
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return text

    return parse


SETTINGS: dict[str, Callable[[Any], Any]] = {
    "host": lambda value: _text(value).strip() or "127.0.0.1",
    "port": _integer(0, 65535),
    "data_dir": _path,
    "secret": _optional_text,
    "site_ids": _site_ids,
    "sites": _sites,
    "filter_bots": _boolean,
    "rate_limit": _number(0),
    "rate_burst": _optional_number(1),
    "flush_count": _integer(1),
    "flush_interval": _number(0.01),  # shorter: the writer would spin
    "queue_size": _integer(1),
    "durability": _choice("wal", "memory"),
    "compaction_interval": _number(0),
    "retention_days": _integer(0, 36_500),
    "query_cache_entries": _integer(0),
    "query_memory_mb": _integer(64, 1_048_576),
    "workers": _workers,
    "shutdown_timeout": _number(0, inclusive=False),
    "trusted_proxies": _networks,
    "admin_password": _admin_password,
    "cookie_secure": _boolean,
    "session_ttl": _number(0, inclusive=False, maximum=TEN_YEARS),
    "login_max_failures": _integer(1),
    "login_lockout": _number(0, inclusive=False, maximum=TEN_YEARS),
    "log_format": _choice("text", "json"),
    "geoip_db": _geoip_database,
    "metrics_token": _optional_text,
    "gdpr_mode": _boolean,
    "strip_referrer_query": _boolean,
    "round_timestamps": _boolean,
    "drop_versions": _boolean,
    "drop_screen_size": _boolean,
    "country_only": _boolean,
}


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML settings file; any problem is a ConfigError naming the file."""
    try:
        # without blocking: opening a FIFO for reading would wait for a writer
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):  # a FIFO, /dev/zero...
                raise ConfigError(f"config: {str(path)!r} is not a regular file")
            text = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"config: cannot read {str(path)!r}: {error.strerror}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {str(path)!r} is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        return tomllib.loads(text.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config: {str(path)!r} is not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"config: {str(path)!r} nests arrays or tables too deeply") from None


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge every source by precedence (flag > env > TOML > default) and validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[str, Any]] = {}  # setting -> (where it came from, value)

    if config_file is not None:
        for key, value in read_toml(config_file).items():
            if key not in SETTINGS:
                raise ConfigError(f"{key}: unknown setting in {str(config_file)!r}")
            raw[key] = (f"{key} (in {config_file})", value)
    for key in SETTINGS:
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            raw[key] = (env_name, environ[env_name])
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key] = ("--" + key.replace("_", "-"), value)

    values = {}
    for key, (source, value) in raw.items():
        try:
            values[key] = SETTINGS[key](value)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    return Settings(**values)
