"""`lmforge serve` keys: an empty key (what `--api-key "$UNSET_VAR"` gives) must not open the server, and
only `Authorization: Bearer <key>` is a key."""

from __future__ import annotations

import logging

import httpx
import pytest
from hostile_limits import run_cli
from serve_fixtures import KEY, MODEL, free_port, serve_model_dir, served  # noqa: F401

from lmforge.errors import ConfigError
from lmforge.serve.protocol import ServeConfig


def test_an_empty_api_key_on_a_public_host_exits_2_without_binding(serve_model_dir):  # noqa: F811
    m = run_cli("serve", str(serve_model_dir), "--host", "0.0.0.0", "--port", str(free_port()), "--api-key", "",
                "--device", "cpu", timeout=40, address_space_mb=8000)
    assert not m.timed_out, "the server started with an empty key"
    assert m.returncode == 2, m.stderr[-2000:]
    assert "api_keys" in m.stdout + m.stderr


@pytest.mark.parametrize("keys", [[""], ["   "], ["good-key-long-enough", "\t"]])
def test_blank_keys_are_config_errors_on_any_host(keys):
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(ConfigError, match="api_keys"):
            ServeConfig(host=host, api_keys=keys)


def test_short_keys_warn_off_loopback_only(caplog):
    from lmforge.serve.http import log_exposure

    with caplog.at_level(logging.WARNING, logger="lmforge.serve.http"):
        log_exposure(ServeConfig(host="0.0.0.0", api_keys=["short-key"]))
    assert any("16 characters" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmforge.serve.http"):
        log_exposure(ServeConfig(host="127.0.0.1", api_keys=["short-key"]))
        log_exposure(ServeConfig(host="0.0.0.0", api_keys=["a-key-of-twenty-chars"]))
    assert not caplog.records


@pytest.mark.parametrize("header", [KEY, f"Basic {KEY}", "Bearer", f"Bearer{KEY}", f"Token {KEY}",
                                    f"Bearer {KEY}x", f"Bearer {KEY} {KEY}"])
def test_a_header_that_is_not_bearer_and_the_key_is_refused(served, header):  # noqa: F811
    r = httpx.get(f"{served.base}/v1/models", headers={"Authorization": header})
    assert r.status_code == 401, header
    assert r.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"Bearer   {KEY}"])
def test_bearer_and_the_key_is_accepted(served, header):  # noqa: F811
    r = httpx.get(f"{served.base}/v1/models", headers={"Authorization": header})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL
