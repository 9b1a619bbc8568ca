"""Strict config validation: every problem names the file, the dotted key path, and what was
expected; a bad config writes nothing (exit 2)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from outreach import registry
from outreach.config import ConfigError, load, parse

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = tomllib.loads((ROOT / "config.example.toml").read_text("utf-8"))


def _parse(data: dict[str, Any]) -> Any:
    return parse(
        data, Path("bad.toml"), registry.channel_kinds(), registry.channel_settings_models()
    )


def _mutated(path: str, value: Any) -> dict[str, Any]:
    """Deep-copy the example and set ``path`` (dots, [i] for lists); value None deletes."""
    import copy
    import re

    data = copy.deepcopy(EXAMPLE)
    parts = [p for p in re.split(r"\.|\[(\d+)\]", path) if p]
    node: Any = data
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node[p]
    last = parts[-1]
    key: Any = int(last) if last.isdigit() else last
    if value is None:
        del node[key]
    else:
        node[key] = value
    return data


def test_example_config_is_valid() -> None:
    cfg = _parse(EXAMPLE)
    assert cfg.cases[0].key == "zhang-cancel"
    # values are normalised on load
    assert cfg.sender.phone == "+8613800138000"
    assert cfg.parties["shenzhen-agent"].contacts[1].value == "+8613900139000"


BAD = [
    # (mutation path, new value, expected key path in the message, expected words)
    ("sender.name", None, "sender.name", "required key is missing"),
    ("sender.nmae", "x", "sender.nmae", "unknown key"),
    (
        "merchants[0].terminals[0].acquirer",
        "nobody",
        "merchants[0].terminals[0].acquirer",
        "no party 'nobody'",
    ),
    (
        "merchants[0].terminals[0].agent",
        "lakala",
        "merchants[0].terminals[0].agent",
        "expected 'agent'",
    ),
    ("cases[0].merchant", "ghost", "cases[0].merchant", "no merchant 'ghost'"),
    ("cases[0].plan", "fast", "cases[0].plan", "no plan 'fast'"),
    ("cases[0].terminals", ["99999999"], "cases[0].terminals[0]", "has no terminal '99999999'"),
    ("cases[0].goal", "cancel", "cases[0].goal", "expected 'cancel_terminal'"),
    (
        "parties.shenzhen-agent.contacts[0].value",
        "not-an-email",
        "parties.shenzhen-agent.contacts[0]",
        "not an e-mail address",
    ),
    (
        "parties.shenzhen-agent.contacts[1].value",
        "12",
        "parties.shenzhen-agent.contacts[1]",
        "not a valid phone number",
    ),
    ("parties.lakala.licence_no", "Z123", "parties.lakala.licence_no", "Z + 13 digits"),
    ("parties.lakala.role", "bank", "parties.lakala.role", "expected 'agent'"),
    ("merchants[0].merchant_no", 822584053990001, "merchants[0].merchant_no", "string"),
    ("plans.standard.steps[0].after", "0", "plans.standard.steps[0].after", "integer"),
    ("plans.standard.steps[0].to", "nobody", "plans.standard.steps[0].to", "neither a role"),
    (
        "plans.standard.steps[0].via",
        ["email", "fax"],
        "plans.standard.steps[0].via[1]",
        "expected 'email'",
    ),
    ("channels.outbox.adapter", "carrier-pigeon", "channels.outbox.adapter", "unknown adapter"),
    ("channels.outbox.password", "hunter2", "channels.outbox.password", "_env"),
    ("channels.outbox.limits", ["5 per hour"], "channels.outbox.limits[0]", "COUNT/PERIOD"),
    ("merchants[0].key", "Zhang Store", "merchants[0].key", "lower-case"),
    ("sender.email", "zhangsan@", "sender.email", "not an e-mail address"),
    ("parties.lakala.uscc", "91310000132200821X", "parties.lakala.uscc", "check character"),
    ("cases[0].deposit", "lots", "cases[0].deposit", "amount in yuan"),
]


@pytest.mark.parametrize(
    ("path", "value", "where", "words"), BAD, ids=[b[0] + "=" + repr(b[1]) for b in BAD]
)
def test_malformed_config_names_key_path(path: str, value: Any, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(_mutated(path, value))
    text = str(info.value)
    assert f"bad.toml: {where}" in text, text
    assert words in text, text


def test_every_problem_is_reported_at_once() -> None:
    data = _mutated("cases[0].merchant", "ghost")
    data["cases"][0]["plan"] = "fast"
    with pytest.raises(ConfigError) as info:
        _parse(data)
    assert {p for p, _ in info.value.problems} >= {"cases[0].merchant", "cases[0].plan"}


def test_refund_case_needs_deposit() -> None:
    data = _mutated("cases[0].goal", "refund_deposit")
    with pytest.raises(ConfigError, match=r"cases\[0\]\.deposit: a refund_deposit case needs"):
        _parse(data)


def test_via_kind_without_channel_is_rejected() -> None:
    data = _mutated("plans.standard.steps[0].via", ["phone"])
    del data["channels"]["calls"]
    with pytest.raises(
        ConfigError, match=r"steps\[0\]\.via: no configured channel can send 'phone'"
    ):
        _parse(data)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[sender\nname = 1", "utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, registry.channel_kinds())
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml", registry.channel_kinds())


def test_cli_rejects_bad_config_with_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    text = (
        (ROOT / "config.example.toml")
        .read_text("utf-8")
        .replace('merchant = "zhang-store"', 'merchant = "ghost"')
    )
    cfg = tmp_path / "outreach.toml"
    cfg.write_text(text, "utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "outreach", "-c", str(cfg), "run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"{cfg}: cases[0].merchant: no merchant 'ghost'" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert not (tmp_path / "var").exists()


def test_every_channel_adapter_validates_a_realistic_table() -> None:
    """Adapter settings from the README examples pass the engine's own secret checks."""
    data = _mutated("channels.outbox", EXAMPLE["channels"]["outbox"])
    data["channels"].update(
        {
            "tw": {
                "adapter": "twilio_sms",
                "account_sid": "AC" + "0" * 32,
                "api_key_sid": "SK" + "0" * 32,
                "api_key_secret_env": "TWILIO_SECRET",
                "from_number": "+14155550100",
            },
            "gw": {
                "adapter": "http_sms",
                "url": "https://sms.example.cn/send",
                "encoding": "json",
                "request": {"mobile": "{recipient_national}", "content": "{text}"},
                "headers_env": {"X-Api-Key": "GW_KEY"},
                "success_path": "code",
                "success_values": ["0"],
            },
        }
    )
    cfg = _parse(data)
    assert cfg.channels["gw"]["headers_env"] == {"X-Api-Key": "GW_KEY"}


def test_env_table_with_a_value_not_a_name_is_rejected() -> None:
    data = _mutated("channels.outbox", EXAMPLE["channels"]["outbox"])
    data["channels"]["gw"] = {"adapter": "outbox", "headers_env": {"X-Api-Key": "sk-live-123"}}
    with pytest.raises(ConfigError, match=r"channels\.gw\.headers_env: expected the NAME"):
        _parse(data)
