"""The local Neo4j's pure parts: reading Java's version, the server's configuration, the cache's key."""

from __future__ import annotations

import pytest

from etl.dev import neo4jserver


@pytest.mark.parametrize(
    ("text", "major"),
    [('openjdk version "17.0.15" 2025-04-15', 17), ('openjdk version "21" 2023-09-19', 21),
     ('java version "1.8.0_402"', 8), ('openjdk version "25.0.1" 2025-10-21 LTS', 25), ("no version here", None)],
)
def test_java_major_reads_every_version_scheme(text: str, major: int | None) -> None:
    assert neo4jserver.java_major(text) == major


def test_config_is_bolt_alone_on_loopback_with_authentication_and_a_bounded_page_cache() -> None:
    settings = dict(line.split("=", 1) for line in neo4jserver.config_text(7699, 256).splitlines() if line)
    assert settings["server.bolt.listen_address"] == "127.0.0.1:7699"
    assert settings["server.http.enabled"] == settings["server.https.enabled"] == "false"
    assert settings["dbms.security.auth_enabled"] == "true"
    assert settings["dbms.usage_report.enabled"] == "false"
    assert settings["server.memory.pagecache.size"] == "256m"


def test_the_pom_names_a_5_26_community_neo4j() -> None:
    assert neo4jserver.neo4j_version().startswith("5.26.")


def test_a_missing_java_says_what_to_install(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no bin/java there
    with pytest.raises(neo4jserver.JavaMissing, match="apt-get install openjdk-17-jdk-headless maven"):
        neo4jserver.toolchain()
