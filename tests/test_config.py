"""Settings: defaults, precedence, value parsing and errors that name the setting."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from mallard.config import ConfigError, Settings, load_settings


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mallard.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_interface_table() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_dir == Path("./data")
    assert settings.secret is None
    assert settings.site_ids == ()
    assert settings.filter_bots is True
    assert settings.rate_limit == 0
    assert settings.effective_rate_burst == 0
    assert settings.flush_count == 1000
    assert settings.flush_interval == 60.0
    assert settings.shutdown_timeout == 30.0
    assert settings.admin_password is None
    assert settings.log_format == "text"
    assert set(settings.trusted_proxies) == {
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    }


def test_documented_trusted_proxies_default_parses_to_the_default() -> None:
    settings = load_settings(environ={"MALLARD_TRUSTED_PROXIES": "127.0.0.1/8,::1"})
    assert settings.trusted_proxies == Settings().trusted_proxies


def test_precedence_flag_over_env_over_toml_over_default(tmp_path: Path) -> None:
    config = toml(tmp_path, 'port = 1111\nhost = "10.0.0.1"\nflush_count = 5\n')
    env = {"MALLARD_PORT": "2222", "MALLARD_HOST": "10.0.0.2"}
    settings = load_settings(config_file=config, environ=env, flags={"port": 3333})
    assert settings.port == 3333  # flag
    assert settings.host == "10.0.0.2"  # env
    assert settings.flush_count == 5  # TOML
    assert settings.flush_interval == 60.0  # default


def test_none_flags_do_not_override(tmp_path: Path) -> None:
    settings = load_settings(
        config_file=toml(tmp_path, "port = 1111\n"),
        environ={},
        flags={"port": None, "host": None, "data_dir": None},
    )
    assert (settings.port, settings.host) == (1111, "127.0.0.1")


def test_flags_as_strings(tmp_path: Path) -> None:
    settings = load_settings(
        environ={}, flags={"port": "0", "host": "0.0.0.0", "data_dir": str(tmp_path)}
    )
    assert (settings.port, settings.host, settings.data_dir) == (0, "0.0.0.0", tmp_path)


def test_every_setting_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        environ={
            "MALLARD_HOST": "0.0.0.0",
            "MALLARD_PORT": "9000",
            "MALLARD_DATA_DIR": str(tmp_path),
            "MALLARD_SECRET": "s3cret",
            "MALLARD_SITE_IDS": "Example.com, shop.example.org ,,localhost:3000",
            "MALLARD_FILTER_BOTS": "no",
            "MALLARD_RATE_LIMIT": "2.5",
            "MALLARD_RATE_BURST": "10",
            "MALLARD_FLUSH_COUNT": "50",
            "MALLARD_FLUSH_INTERVAL": "0.5",
            "MALLARD_SHUTDOWN_TIMEOUT": "5",
            "MALLARD_TRUSTED_PROXIES": "10.0.0.0/8, fd00::/8",
            "MALLARD_ADMIN_PASSWORD": "hunter2 hunter2",
            "MALLARD_LOG_FORMAT": "JSON",
        }
    )
    assert settings == Settings(
        host="0.0.0.0",
        port=9000,
        data_dir=tmp_path,
        secret="s3cret",
        site_ids=("example.com", "shop.example.org", "localhost:3000"),
        filter_bots=False,
        rate_limit=2.5,
        rate_burst=10.0,
        flush_count=50,
        flush_interval=0.5,
        shutdown_timeout=5.0,
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")),
        admin_password="hunter2 hunter2",
        log_format="json",
    )


def test_every_setting_from_toml(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        f"""
host = "0.0.0.0"
port = 9000
data_dir = "{tmp_path}"
site_ids = ["example.com", "Shop.Example.org"]
filter_bots = false
rate_limit = 3
flush_count = 10
flush_interval = 2.5
shutdown_timeout = 1
trusted_proxies = ["192.168.0.0/16"]
log_format = "json"
""",
    )
    settings = load_settings(config_file=config, environ={})
    assert settings.site_ids == ("example.com", "shop.example.org")
    assert settings.filter_bots is False
    assert (settings.rate_limit, settings.effective_rate_burst) == (3.0, 3.0)
    assert (settings.flush_count, settings.flush_interval) == (10, 2.5)
    assert settings.trusted_proxies == (ipaddress.ip_network("192.168.0.0/16"),)
    assert (settings.port, settings.data_dir, settings.log_format) == (9000, tmp_path, "json")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("YeS", True),
        (" yes ", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("No", False),
    ],
)
def test_booleans(text: str, expected: bool) -> None:
    assert load_settings(environ={"MALLARD_FILTER_BOTS": text}).filter_bots is expected


@pytest.mark.parametrize("text", ["", "maybe", "on", "2", "tru"])
def test_malformed_booleans(text: str) -> None:
    with pytest.raises(ConfigError, match="MALLARD_FILTER_BOTS"):
        load_settings(environ={"MALLARD_FILTER_BOTS": text})


def test_site_ids_comma_list() -> None:
    settings = load_settings(environ={"MALLARD_SITE_IDS": "a.com,B.com , c.org"})
    assert settings.site_ids == ("a.com", "b.com", "c.org")
    assert load_settings(environ={"MALLARD_SITE_IDS": ""}).site_ids == ()


@pytest.mark.parametrize(
    ("env", "burst"),
    [
        ({"MALLARD_RATE_LIMIT": "5"}, 5.0),
        ({"MALLARD_RATE_LIMIT": "5", "MALLARD_RATE_BURST": "20"}, 20.0),
        ({"MALLARD_RATE_LIMIT": "5", "MALLARD_RATE_BURST": ""}, 5.0),
        ({}, 0.0),
    ],
)
def test_rate_burst_defaults_to_rate_limit(env: dict[str, str], burst: float) -> None:
    assert load_settings(environ=env).effective_rate_burst == burst


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"MALLARD_PORT": "abc"}, "PORT"),
        ({"MALLARD_PORT": "70000"}, "PORT"),
        ({"MALLARD_PORT": "-1"}, "PORT"),
        ({"MALLARD_PORT": "80.5"}, "PORT"),
        ({"MALLARD_FLUSH_COUNT": "-5"}, "FLUSH_COUNT"),
        ({"MALLARD_FLUSH_COUNT": "0"}, "FLUSH_COUNT"),
        ({"MALLARD_FLUSH_INTERVAL": "0"}, "FLUSH_INTERVAL"),
        ({"MALLARD_FLUSH_INTERVAL": "soon"}, "FLUSH_INTERVAL"),
        ({"MALLARD_FLUSH_INTERVAL": "nan"}, "FLUSH_INTERVAL"),
        ({"MALLARD_SHUTDOWN_TIMEOUT": "-1"}, "SHUTDOWN_TIMEOUT"),
        ({"MALLARD_RATE_LIMIT": "-1"}, "RATE_LIMIT"),
        ({"MALLARD_RATE_LIMIT": "inf"}, "RATE_LIMIT"),
        ({"MALLARD_RATE_BURST": "0.5"}, "RATE_BURST"),
        ({"MALLARD_LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"MALLARD_SITE_IDS": "ok.com,bad site"}, "SITE_IDS"),
        ({"MALLARD_TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
        ({"MALLARD_TRUSTED_PROXIES": "proxy.local"}, "TRUSTED_PROXIES"),
        ({"MALLARD_DATA_DIR": "  "}, "DATA_DIR"),
        ({"MALLARD_QUERY_MEMORY_MB": "10"}, "QUERY_MEMORY_MB"),
        # values that passed and then crashed or stalled the server
        ({"MALLARD_QUERY_MEMORY_MB": "99999999999999"}, "QUERY_MEMORY_MB"),
        ({"MALLARD_ADMIN_PASSWORD": "x" * 1025}, "ADMIN_PASSWORD"),  # no login would take it
        ({"MALLARD_ADMIN_PASSWORD": "short"}, "ADMIN_PASSWORD"),
        ({"MALLARD_RETENTION_DAYS": "1000000"}, "RETENTION_DAYS"),
        ({"MALLARD_FLUSH_INTERVAL": "1e-6"}, "FLUSH_INTERVAL"),
        ({"MALLARD_SESSION_TTL": "1e308"}, "SESSION_TTL"),
        ({"MALLARD_LOGIN_LOCKOUT": "1e308"}, "LOGIN_LOCKOUT"),
        ({"MALLARD_SITES": "=Europe/Berlin"}, "SITES"),
        ({"MALLARD_SITES": "a.com=UTC,A.com=Asia/Tokyo"}, "SITES"),  # which zone is a.com's?
        ({"MALLARD_PORT": "\uff18\uff10\uff18\uff11"}, "PORT"),  # full-width 8081: int() took it
        ({"MALLARD_FLUSH_COUNT": "1_000"}, "FLUSH_COUNT"),
        ({"MALLARD_RATE_LIMIT": "1_0"}, "RATE_LIMIT"),
        ({"MALLARD_SITE_IDS": "a" * 248}, "SITE_IDS"),  # site_id=<site> would not fit a name
        ({"MALLARD_GEOIP_DB": __file__}, "GEOIP_DB"),  # a file, not a MaxMind database
    ],
)
def test_malformed_environment_value_names_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=f"MALLARD_{setting}"):
        load_settings(environ=env)


@pytest.mark.parametrize(
    ("flags", "name"),
    [({"port": "abc"}, "--port"), ({"port": 99999}, "--port"), ({"data_dir": ""}, "--data-dir")],
)
def test_malformed_flag_names_the_flag(flags: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={}, flags=flags)


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ('port = "abc"', "port"),
        ("port = true", "port"),
        ("flush_count = -5", "flush_count"),
        ('log_format = "xml"', "log_format"),
        ('filter_bots = "perhaps"', "filter_bots"),
        ("site_ids = [1, 2]", "site_ids"),
        ("host = 5", "host"),
        ('host = "127.0.0.1\\u0000"', "host"),
        ('data_dir = "/tmp/x\\u0000y"', "data_dir"),
        ('data_dir = "~nosuchuser-mallard/d"', "data_dir"),
        ('geoip_db = "~nosuchuser-mallard/db.mmdb"', "geoip_db"),
        (f"flush_interval = {'9' * 400}", "flush_interval"),
        (f"rate_limit = {'9' * 400}", "rate_limit"),
    ],
)
def test_malformed_toml_value_names_the_setting(tmp_path: Path, text: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting} "):
        load_settings(config_file=toml(tmp_path, text + "\n"), environ={})


def test_unknown_toml_key_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^flush_cuont: unknown setting"):
        load_settings(config_file=toml(tmp_path, "flush_cuont = 10\n"), environ={})


@pytest.mark.parametrize("text", ["port = = 8000\n", 'host = "\xff"\n'.encode("latin-1")])
def test_invalid_toml(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "mallard.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=r"config: .*mallard\.toml.* is not valid TOML"):
        load_settings(config_file=path, environ={})


@pytest.mark.parametrize("name", ["missing.toml", "."])
def test_unreadable_toml(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_settings(config_file=tmp_path / name, environ={})


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("fifo", "is not a regular file"),  # reading it waited for a writer for ever
        ("device", "is not a regular file"),  # /dev/zero was read until memory ran out
        ("deep", "nests arrays or tables too deeply"),  # a RecursionError traceback
        ("huge", "is larger than 1,000,000 bytes"),
    ],
)
def test_a_config_file_that_holds_no_settings(tmp_path: Path, kind: str, problem: str) -> None:
    path = tmp_path / "mallard.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    elif kind == "deep":
        path.write_text("x = " + "[" * 2000 + "]" * 2000 + "\n")
    else:
        path.write_text("# a comment\n" * 100_000)
    with pytest.raises(ConfigError, match=problem) as info:
        load_settings(config_file=path, environ={})
    assert "\n" not in str(info.value)


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    for call in (
        lambda: load_settings(environ={"MALLARD_PORT": "abc"}),
        lambda: load_settings(config_file=toml(tmp_path, "a = [\n1,\n"), environ={}),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        assert "\n" not in str(info.value)


def test_environment_ignores_unrelated_variables() -> None:
    settings = load_settings(environ={"PORT": "1", "MALLARD_UNKNOWN": "x", "HOME": "/root"})
    assert settings == Settings()
