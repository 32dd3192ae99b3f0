"""The config file: typed, unknown keys rejected with their name, overridable."""

from pathlib import Path

import pytest

from cwboot import config


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CWBOOT_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    cfg = config.load()
    assert cfg.dhcp.port == 67
    assert cfg.store.backend == "embedded"
    assert cfg.store_path == Path("/var/lib/cwboot/store.sqlite3")


def test_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cwboot.toml"
    path.write_text('[head]\nstate_dir = "/srv/cw"\n[dhcp]\nport = 6767\n')
    cfg = config.load(path, ["tftp.port=6969", 'api.admin_tokens=["a", "b"]', "head.name=h1"])
    assert (cfg.dhcp.port, cfg.tftp.port) == (6767, 6969)
    assert cfg.api.admin_tokens == ["a", "b"]
    assert cfg.head.name == "h1"  # a bare word is taken as a string
    assert cfg.images_dir == Path("/srv/cw/images")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dhcp]\nprot = 67\n", "unknown key 'dhcp.prot'"),
        ("[dchp]\nport = 67\n", "unknown section 'dchp'"),
        ('[dhcp]\nport = "67"\n', "dhcp.port: expected int"),
        ("[dhcp]\nport = true\n", "dhcp.port: expected an integer"),
        ("[dhcp]\nport = 70000\n", "dhcp.port: 70000 is not a port number"),
        ("[dhcp]\nenrol_rate = 0\n", "dhcp.enrol_rate: expected > 0"),
        ("[dhcp]\nenrol_burst = 0\n", "dhcp.enrol_burst: expected >= 1"),
        ('[store]\nbackend = "redis"\n', "store.backend"),
        ("[api]\nadmin_tokens = [1]\n", "api.admin_tokens[0]"),
        ("dhcp = 1\n", "'dhcp' must be a table"),
        ("[dhcp\n", "cwboot.toml"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cwboot.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


def test_an_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_bad_override_syntax() -> None:
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.parse_override("port=1")


def test_float_setting_accepts_an_integer(tmp_path: Path) -> None:
    cfg = config.from_dict({"power": {"timeout": 3}})
    assert cfg.power.timeout == 3.0 and isinstance(cfg.power.timeout, float)


def test_tftp_settings_for_a_child_process_are_typed_like_the_file() -> None:
    cfg = config.tftp_from_settings("127.0.0.1", 0, ["max_transfers=8", "timeout=2", "own_process=false"])
    assert (cfg.listen, cfg.port, cfg.max_transfers, cfg.timeout, cfg.own_process) == ("127.0.0.1", 0, 8, 2.0, False)
    with pytest.raises(config.ConfigError, match="unknown key 'tftp.bogus'"):
        config.tftp_from_settings("127.0.0.1", 0, ["bogus=1"])
    # "False" is a word, not a boolean: refused, never read as a true value.
    with pytest.raises(config.ConfigError, match="tftp.own_process: expected bool"):
        config.tftp_from_settings("127.0.0.1", 0, ["own_process=False"])
