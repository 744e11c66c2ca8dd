"""GeoIP on real ``.mmdb`` files built in the test: country, ASN and organisation, missing fields, both families,
and a file that is no database refused with a typed error."""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path

import maxminddb
import pytest

from etl.broker import retry_when
from etl.errors import LookupFileError, LookupReadError, TransientError
from etl.lookups.geoip import UNKNOWN, Geo, GeoIp
from tests.support.mmdb import asn_record, city_record, write_mmdb


@pytest.fixture
def city(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "city.mmdb", {
        "198.51.100.0/24": city_record("NL"),
        "198.51.100.128/25": city_record("BE"),  # nested: the more specific network wins
        "192.0.2.0/24": city_record(None, registered="US"),  # anycast: only the registered country
        "203.0.113.0/24": {"city": {"names": {"en": "Nowhere"}}},  # no country at all
        "2001:db8:1::/48": city_record("DE"),
        "2001:db8:2::/48": {"country": {"iso_code": 49}},  # a field of the wrong type
    }, database_type="GeoLite2-City")


@pytest.fixture
def asn(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "asn.mmdb", {
        "198.51.100.0/24": asn_record(64500, "Example Transit B.V."),
        "203.0.113.0/24": asn_record(64501, None),
    }, database_type="GeoLite2-ASN", ip_version=4)


# MODE_AUTO takes the C extension; MODE_MMAP the pure-Python reader, which a machine without the extension uses.
MODES = [pytest.param(maxminddb.MODE_AUTO, id="auto"), pytest.param(maxminddb.MODE_MMAP, id="python")]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> int:
    mode: int = request.param
    return mode


@pytest.fixture
def geoip(city: Path, asn: Path, mode: int) -> Iterator[GeoIp]:
    with GeoIp.open(city, asn, mode=mode) as opened:
        yield opened


@pytest.mark.parametrize(("ip", "expected"), [
    ("198.51.100.7", Geo("NL", 64500, "Example Transit B.V.")),
    ("198.51.100.200", Geo("BE", 64500, "Example Transit B.V.")),
    ("::ffff:198.51.100.7", Geo("NL", 64500, "Example Transit B.V.")),
    ("192.0.2.1", Geo("US", None, None)),
    ("203.0.113.5", Geo(None, 64501, None)),
    ("2001:db8:1::1", Geo("DE", None, None)),  # the ASN database holds IPv4 only
    ("2001:db8:2::1", Geo(None, None, None)),
    ("8.8.8.8", UNKNOWN),
    ("2001:db8:3::1", UNKNOWN),
    ("2001:db8:1::1%eth0", Geo("DE", None, None)),  # a zone id, which the readers do not parse
    (ipaddress.IPv4Address("198.51.100.7"), Geo("NL", 64500, "Example Transit B.V.")),
    (ipaddress.IPv6Address("::ffff:198.51.100.7"), Geo("NL", 64500, "Example Transit B.V.")),
    (ipaddress.IPv6Address("2001:db8:1::1"), Geo("DE", None, None)),
])
def test_lookups(geoip: GeoIp, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, expected: Geo) -> None:
    assert geoip.lookup(ip) == expected


def test_a_geo_serialises_to_a_small_dict(geoip: GeoIp) -> None:
    assert geoip.lookup("198.51.100.7").as_dict() == {"country": "NL", "asn": 64500,
                                                     "organization": "Example Transit B.V."}


def test_either_database_may_be_absent(city: Path, asn: Path) -> None:
    with GeoIp.open(city_path=city) as only_city:
        assert only_city.lookup("198.51.100.7") == Geo("NL", None, None)
    with GeoIp.open(asn_path=asn) as only_asn:
        assert only_asn.lookup("198.51.100.7") == Geo(None, 64500, "Example Transit B.V.")
    with GeoIp.open() as neither:
        assert neither.lookup("198.51.100.7") is UNKNOWN


def test_a_lookup_of_a_non_address_raises_value_error(geoip: GeoIp) -> None:
    with pytest.raises(ValueError):
        geoip.lookup("not-an-ip")


@pytest.mark.parametrize("content", [b"", b"cidr,site\n10.0.0.0/8,hq\n", b"\xab\xcd\xefMaxMind.com\x00\x01"])
def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path, content: bytes, mode: int) -> None:
    path = tmp_path / "bad.mmdb"
    path.write_bytes(content)
    with pytest.raises(LookupFileError, match="not a readable MaxMind database") as raised:
        GeoIp.open(asn_path=path, mode=mode)
    assert raised.value.path == str(path)


def test_a_truncated_database_is_refused(tmp_path: Path, city: Path, mode: int) -> None:
    cut = tmp_path / "cut.mmdb"
    cut.write_bytes(city.read_bytes()[:200])
    with pytest.raises(LookupFileError):
        GeoIp.open(city_path=cut, mode=mode)


def test_a_missing_file_is_refused(tmp_path: Path, city: Path) -> None:
    with pytest.raises(LookupFileError, match="No such file"):
        GeoIp.open(city, tmp_path / "absent.mmdb")


def test_a_database_rewritten_in_place_under_its_reader_fails_with_a_transient_error(
        tmp_path: Path, city: Path, mode: int) -> None:
    """Copied over in place (truncated, then written: what ``cp`` does), not renamed over: the reader, which maps
    the file, reads the new bytes through the old layout. What fails (some lookups may instead answer wrongly) is
    a transient error: the batch that asked is retried, not dead-lettered as bad data, while the reload picks up
    the new file."""
    other = write_mmdb(tmp_path / "other.mmdb", {f"{10 + i // 256}.{i % 256}.0.0/16": city_record("FR")
                                                 for i in range(1000)} | {"198.51.100.0/24": city_record("LU")},
                       database_type="GeoLite2-City")
    # Never shorter than the file mapped: a read past the end of a mapped file is SIGBUS, which kills the process.
    assert other.stat().st_size > city.stat().st_size
    errors: list[Exception] = []
    with GeoIp.open(city_path=city, mode=mode) as geoip:
        assert geoip.lookup("198.51.100.7").country == "NL"
        shutil.copyfile(other, city)
        for ip in ("198.51.100.7", "198.51.100.200", "192.0.2.1", "2001:db8:1::1", "8.8.8.8", "10.5.0.1"):
            try:
                geoip.lookup(ip)
            except Exception as e:  # noqa: BLE001 - every kind is looked at below
                errors.append(e)
    assert errors, "a lookup through the old layout fails"
    assert all(isinstance(e, LookupReadError) and e.path == str(city) for e in errors), errors
    assert isinstance(errors[0], TransientError)
    assert retry_when(max_retries=8)(0, errors[0]), "the batch is retried"
    with GeoIp.open(city_path=city, mode=mode) as reloaded:
        assert reloaded.lookup("198.51.100.7").country == "LU"
