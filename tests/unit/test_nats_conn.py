"""What the one NATS connection function hands nats-py: every seed of NATS_URL, and credentials for all of them."""

from __future__ import annotations

import pytest

from etl.config import Settings
from etl.natsio.conn import auth_options, url_credentials


@pytest.mark.parametrize(("urls", "options"), [
    (["nats://n1", "nats://n2"], {}),
    (["nats://u:pw@n1", "nats://u:pw@n2"], {"user": "u", "password": "pw"}),
    (["nats://tok@n1", "tls://tok@n2"], {"token": "tok"}),
    (["nats://u:pw@n1", "nats://n2"], {}),
    (["nats://u:pw@n1", "nats://u:other@n2"], {}),
])
def test_credentials_every_url_carries_go_to_every_server(urls: list[str], options: dict[str, str]) -> None:
    assert url_credentials(urls) == options


def test_auth_options_use_tls_when_any_seed_says_tls() -> None:
    settings = Settings.from_env({"NATS_URL": "nats://tok@n1:4222,tls://tok@n2:4222"})
    options = auth_options(settings)
    assert options["token"] == "tok" and "tls" in options
