"""Configuration parsing, validation, errors and reload."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from pathlib import Path

import pytest

from mizud import config
from mizud.config import OPTIONS, ConfigError, Settings, load, parse_duration, parse_size


def write(tmp_path: Path, text: str) -> str:
    """Write an ini file and return its path."""
    path = tmp_path / "mizud.ini"
    path.write_text(text)
    return str(path)


def test_defaults_follow_the_spec() -> None:
    """Without sources every option has the spec's (or mizud's documented) default."""
    cfg = load()
    assert cfg.mainaport == 80
    assert cfg.sslportmain == 443
    assert cfg.httpserver == 8084
    assert cfg.httpapimd5salt == "87159643"
    assert cfg.usemainaport is True
    assert cfg.mainaportudp is None
    assert cfg.database == "var/mizud.sqlite"
    assert cfg.engine == "sqlite"
    assert cfg.remoteadmin == 1
    assert cfg.mincreditonroute == Decimal(0)
    assert cfg.bootstrapadmin is None
    assert len(cfg) == len(OPTIONS)


def test_ini_and_set_override(tmp_path: Path) -> None:
    """The ini file sets values, case-insensitively; --set wins over it."""
    path = write(tmp_path, "; comment\n[GLOBAL]\nMainAPort = 8080\napiv2key=abc\n# other\ntrustediplist = 10.0.0.1, 192.168.0.0/16\n")
    cfg = load(path, ["mainaport=9090", "httpstrictresponse=yes"])
    assert cfg.mainaport == 9090
    assert cfg.apiv2key == "abc"
    assert cfg.httpstrictrtspose is True
    assert cfg.trustediplist == (ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("192.168.0.0/16"))
    assert cfg.origins["mainaport"] == "--set"
    assert cfg.origins["apiv2key"] == f"{path}:4"


def test_aliases_from_the_specs() -> None:
    """Misspelt and old option names from the specs are accepted as aliases."""
    cfg = load(None, ["httppimd5salt=1", "httppapiallowedip=127.0.0.1", "apiv2ipaauth=10.1.1.1"])
    assert cfg.httpapimd5salt == "1"
    assert cfg.httpapiallowedip == (ipaddress.ip_network("127.0.0.1/32"),)
    assert cfg.apiv2ipauth == (ipaddress.ip_network("10.1.1.1/32"),)


def test_unknown_key_in_file_names_key_and_line(tmp_path: Path) -> None:
    """An unknown key stops with its name, the file and the line."""
    path = write(tmp_path, "[global]\nmainaport = 80\n\nmainport = 81\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.key == "mainport"
    assert str(caught.value) == f"{path}:4: mainport: unknown option"


def test_bad_value_names_key_and_line(tmp_path: Path) -> None:
    """A bad value stops with the key, the file line and what was expected."""
    path = write(tmp_path, "[global]\nmainaport = eighty\n")
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}:2: mainaport: expected an integer")


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("mainaport=70000", "from 0 to 65535"),
        ("usemainaport=maybe", "expected a boolean"),
        ("trustediplist=10.0.0.300", "not an IP address"),
        ("listenaddress=example.com", "not an IP address"),
        ("database=mysql://x", "unsupported database URL"),
        ("bootstrapadmin=admin", "username:password"),
        ("bootstrapadmin=admin:short", "at least 8"),
        ("defaultcurrency=dollars", "currency code"),
        ("mincreditonroute=NaN", "finite"),
        ("apidefneedlogin=4", "from 0 to 3"),
        ("nosuchoption=1", "unknown option"),
        ("mainaport", "key=value"),
    ],
)
def test_bad_set_values(assignment: str, fragment: str) -> None:
    """Each bad --set value is refused naming the key."""
    with pytest.raises(ConfigError) as caught:
        load(None, [assignment])
    assert fragment in str(caught.value)
    key = assignment.partition("=")[0]
    if "=" in assignment:
        assert caught.value.key == key


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("mainaport = 80\n", "outside the [global] section"),
        ("[other]\nx = 1\n", "unknown section [other]"),
        ("[global]\nmainaport = 80\nMAINAPORT = 81\n", "given twice"),
        ("[global]\nhttpstrictrtspose = 1\nhttpstrictresponse = 0\n", "given twice"),
        ("[global]\njunk\n", "expected key = value"),
        ("[global\n", "malformed section"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    """Structural mistakes in the file are refused with the line."""
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    assert fragment in str(caught.value)
    assert ":" in (caught.value.where or "")


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing config file is a config error naming the file."""
    with pytest.raises(ConfigError) as caught:
        load(str(tmp_path / "missing.ini"))
    assert "cannot read config file" in str(caught.value)


def test_durations_and_sizes() -> None:
    """Durations and sizes share one syntax with units."""
    assert parse_duration("10m") == 600
    assert parse_duration("250ms") == 0.25
    assert parse_duration("45") == 45
    assert parse_size("64k") == 65536
    assert parse_size("8MiB") == 8 * 1024 * 1024
    for bad in ("10 minutes", "-1s", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError):
        parse_size("lots")


def test_postgres_database_is_the_postgres_engine() -> None:
    """A postgresql:// database selects the PostgreSQL engine."""
    assert load(None, ["database=postgresql://u:p@h/db"]).engine == "postgresql"


def test_reload_applies_live_options_only(tmp_path: Path) -> None:
    """reload() applies changed live options and reports the ones needing a restart."""
    path = write(tmp_path, "[global]\napiv2key = one\nmainaport = 8080\n")
    settings = Settings(path)
    Path(path).write_text("[global]\napiv2key = two\nmainaport = 9090\n")
    applied, pending = settings.reload()
    assert applied == ["apiv2key"]
    assert pending == ["mainaport"]
    assert settings.current.apiv2key == "two"
    assert settings.current.mainaport == 8080


def test_reload_with_bad_file_keeps_config(tmp_path: Path) -> None:
    """A reload that finds a bad file raises and keeps the running config."""
    path = write(tmp_path, "[global]\napiv2key = one\n")
    settings = Settings(path)
    Path(path).write_text("[global]\napiv2key = one\nmainaport = x\n")
    with pytest.raises(ConfigError):
        settings.reload()
    assert settings.current.apiv2key == "one"


def test_shipped_sample_ini_is_current_and_valid() -> None:
    """etc/mizud.ini is the generated sample, and it parses to the defaults."""
    shipped = Path(__file__).parent.parent / "etc" / "mizud.ini"
    assert shipped.read_text() == config.sample_ini()
    cfg = load(str(shipped))
    assert dict(cfg) == dict(load())
    for opt in OPTIONS:
        assert f";{opt.name} = {opt.default}\n" in shipped.read_text()
