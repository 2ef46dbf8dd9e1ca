"""Settings precedence (defaults < TOML < env < flags) and validation errors."""
import subprocess
import sys

import pytest

from kefu import config
from kefu.errors import ConfigError


def test_defaults_are_the_documented_flags():
    s = config.load({}, env={})
    assert (s.api_port, s.comet_port, s.tcp_port) == (8090, 3102, 3101)
    assert s.host == "127.0.0.1" and s.redis_url == "" and s.data_dir == "./var"
    assert s.comet_workers >= 1


def test_precedence(tmp_path):
    toml = tmp_path / "kefu.toml"
    toml.write_text('api_port = 9000\ncomet_port = 9001\ntcp_port = 9002\n')
    env = {"KEFU_COMET_PORT": "9101", "KEFU_TCP_PORT": "9102"}
    s = config.load({"tcp_port": 9202, "api_port": None}, env=env, config_file=str(toml))
    assert (s.api_port, s.comet_port, s.tcp_port) == (9000, 9101, 9202)


def test_kefu_table_in_toml(tmp_path):
    toml = tmp_path / "kefu.toml"
    toml.write_text('[kefu]\nworkers = 3\naccess_log = true\n')
    s = config.load({}, env={}, config_file=str(toml))
    assert s.workers == 3 and s.access_log is True


@pytest.mark.parametrize("env,needle", [
    ({"KEFU_API_PORT": "eighty"}, "api_port"),
    ({"KEFU_API_PORT": "70000"}, "api_port"),
    ({"KEFU_REDIS_URL": "http://x"}, "redis_url"),
    ({"KEFU_HEARTBEAT": "100"}, "heartbeat_timeout"),
    ({"KEFU_ACCESS_LOG": "maybe"}, "access_log"),
    ({"KEFU_NODE_ID": "99"}, "node_id"),
])
def test_bad_values_say_what_is_wrong(env, needle):
    with pytest.raises(ConfigError, match=needle):
        config.load({}, env=env)


def test_unknown_toml_setting(tmp_path):
    toml = tmp_path / "kefu.toml"
    toml.write_text('api_prot = 1\n')
    with pytest.raises(ConfigError, match="api_prot"):
        config.load({}, env={}, config_file=str(toml))


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        config.load({}, env={}, config_file="/nonexistent/kefu.toml")


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "kefu", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_help_lists_subcommands():
    out = _cli("--help")
    assert out.returncode == 0
    for name in ("run", "comet", "api", "shop", "token", "info"):
        assert name in out.stdout


def test_cli_bad_setting_is_one_line_and_exit_1(tmp_path):
    out = _cli("info", "--config", str(tmp_path / "missing.toml"))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "not found" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_info_reports_codec():
    out = _cli("info")
    assert out.returncode == 0, out.stderr
    assert "codec: " in out.stdout
