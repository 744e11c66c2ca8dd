"""The local default's sample lookup files: indicator feeds in each format, an asset inventory and two GeoIP
databases, written into the data directory at start and named to the worker pools by their settings.

The feeds name a few of the values the sample corpus produces (``etl.dev.producers``): endpoints, fetched names
and the dropper's hash, so a run shows matches while most events match nothing; and a few values it never
produces, as a real feed is mostly about other networks. The inventory covers the corpus's host addresses
(``etl.dev.generator.make_hosts``: host ``i`` is in ``10.0.i.0/24``); the GeoIP databases its external endpoints.

A file already there is left alone: it is the user's to edit, and the pools reload it within
``DEV_LOOKUP_RELOAD_S``. ``--clean`` (or deleting it) brings back the sample. Each file is written beside its
final name and renamed over it, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from etl.dev.producers import DROPPER_SHA256

DEV_LOOKUP_RELOAD_S = 5  # short, so an edit shows within a few progress lines
LOOKUPS_DIR = "lookups"
# Values the corpus produces (producers.ENDPOINTS, producers.FETCHED_DOMAINS), which the feeds list.
LISTED_ENDPOINT = "198.51.100.7"
PARTNER_ENDPOINT = "198.51.100.23"
LISTED_NETWORK = "203.0.113.32/30"  # four endpoints
C2_DOMAIN = "c2.tunnel.example"
BAD_CDN_ZONE = "badcdn.example"  # the corpus fetches from dl.badcdn.example: a parent domain matches

PLAIN_FEED = f"""\
# A plain list: one address, network, domain or SHA-256 a line; the source is the file's name.
{LISTED_ENDPOINT}
{C2_DOMAIN}
192.0.2.66  # comments may follow a value
"""

CSV_FEED = f"""\
type,value,source,severity
ip,{PARTNER_ENDPOINT},partner-isac,high
domain,{BAD_CDN_ZONE},partner-isac,medium
cidr,192.0.2.128/25,partner-isac,low
"""

SANDBOX_VERDICTS = (
    {"type": "sha256", "value": DROPPER_SHA256, "source": "sandbox", "severity": "critical"},
    {"type": "sha256", "value": "9" * 64, "source": "sandbox", "severity": "high"},
    {"value": "exfil.example", "source": "sandbox", "severity": "high"},
)


def _stix_indicator(number: int, name: str, pattern: str) -> dict[str, object]:
    return {"type": "indicator", "spec_version": "2.1", "id": f"indicator--00000000-0000-4000-8000-{number:012d}",
            "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "name": name,
            "pattern": pattern, "pattern_type": "stix", "valid_from": "2024-01-01T00:00:00Z"}


STIX_BUNDLE = {
    "type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000000",
    "objects": [
        _stix_indicator(1, "scanning network", f"[ipv4-addr:value ISSUBSET '{LISTED_NETWORK}']"),
        _stix_indicator(2, "tunnel endpoint", f"[domain-name:value = '{C2_DOMAIN}']"),
        _stix_indicator(3, "dropper", f"[file:hashes.'SHA-256' = '{DROPPER_SHA256}']"),
        _stix_indicator(4, "IPv6 scanner", "[ipv6-addr:value = '2001:db8:bad::1']"),
    ],
}

ASSETS = """\
cidr,site,owner,criticality
10.0.0.0/8,corp,it,medium
10.0.1.0/24,fra1,payments,critical
10.0.2.0/23,fra1,platform,high
10.0.4.0/22,ams1,platform,high
10.0.8.0/21,lab,research,low
fd00:a11::/32,corp,it,medium
"""

# The corpus's endpoints (ENDPOINTS: .1 to .40 of each network) by country, and each network's operator; numbers
# from the range reserved for documentation (RFC 5398).
COUNTRIES = {"203.0.113.0/26": "NL", "198.51.100.0/27": "US", "198.51.100.32/27": "SG"}
OPERATORS = {"203.0.113.0/24": (64496, "Example Hosting B.V."), "198.51.100.0/24": (64511, "Example Transit Inc.")}


@dataclass(frozen=True)
class SampleLookups:
    """Where the sample files are."""

    intel_dir: Path
    assets: Path
    geoip_city: Path
    geoip_asn: Path

    @classmethod
    def under(cls, data_dir: Path) -> SampleLookups:
        folder = data_dir / LOOKUPS_DIR
        return cls(folder / "intel", folder / "assets.csv", folder / "geoip-city.mmdb", folder / "geoip-asn.mmdb")

    def env(self) -> dict[str, str]:
        """The settings that point the worker pools at these files."""
        return {"INTEL_PATHS": str(self.intel_dir), "ASSETS_PATH": str(self.assets),
                "GEOIP_CITY_PATH": str(self.geoip_city), "GEOIP_ASN_PATH": str(self.geoip_asn),
                "LOOKUP_RELOAD_S": str(DEV_LOOKUP_RELOAD_S)}


def _text(content: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(content, encoding="utf-8")


def _write_city(path: Path) -> None:
    from etl.dev.mmdb import city_record, write_mmdb  # mmdb-writer: a development dependency, imported when used

    write_mmdb(path, {net: city_record(country) for net, country in COUNTRIES.items()},
               database_type="GeoLite2-City")


def _write_asn(path: Path) -> None:
    from etl.dev.mmdb import asn_record, write_mmdb

    write_mmdb(path, {net: asn_record(*operator) for net, operator in OPERATORS.items()},
               database_type="GeoLite2-ASN")


def _writers(files: SampleLookups) -> dict[Path, Callable[[Path], object]]:
    """Each sample file and what writes it: a feed in each format the loader tells by its name's suffix."""
    verdicts = "".join(json.dumps(verdict) + "\n" for verdict in SANDBOX_VERDICTS)
    return {
        files.intel_dir / "blocklist.txt": _text(PLAIN_FEED),
        files.intel_dir / "partner.csv": _text(CSV_FEED),
        files.intel_dir / "sandbox.jsonl": _text(verdicts),
        files.intel_dir / "taxii-bundle.json": _text(json.dumps(STIX_BUNDLE, indent=2) + "\n"),
        files.assets: _text(ASSETS),
        files.geoip_city: _write_city,
        files.geoip_asn: _write_asn,
    }


def write_samples(data_dir: Path) -> tuple[SampleLookups, list[Path]]:
    """The sample files under ``data_dir``, and those this call wrote (the others were there already). Raises
    ``OSError`` when one cannot be written."""
    files = SampleLookups.under(data_dir)
    written = []
    for path, write in _writers(files).items():
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        # A dot-name: the feed loader ignores hidden files, should a pool read the directory meanwhile.
        partial = path.with_name(f".{path.name}.partial")
        write(partial)
        os.replace(partial, path)
        written.append(path)
    return files, written
