"""The asset inventory: loaded from a real CSV file, the most specific prefix wins, unlisted addresses classified,
malformed rows skipped and counted by line, a file that cannot be read refused whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.errors import LookupFileError
from etl.lookups.assets import (
    UNLISTED_EXTERNAL,
    UNLISTED_INTERNAL,
    Asset,
    AssetInventory,
    is_internal_range,
    load_assets,
)
from etl.lookups.badlines import MAX_BAD_LINES_KEPT

INVENTORY = """\
cidr,site,owner,criticality
10.0.0.0/8,hq,it,medium
10.20.0.0/16,lab,research,low
10.20.30.0/24,lab,research,critical
203.0.113.0/24,dmz,web,high
2001:db8:10::/48,hq,it,high
"""


def write(tmp_path: Path, text: str, name: str = "assets.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def inventory(tmp_path: Path) -> AssetInventory:
    return load_assets(write(tmp_path, INVENTORY))


@pytest.mark.parametrize(("ip", "site", "criticality"), [
    ("10.20.30.40", "lab", "critical"),
    ("10.20.31.1", "lab", "low"),
    ("10.21.0.1", "hq", "medium"),
    ("10.20.30.0", "lab", "critical"),
    ("10.20.30.255", "lab", "critical"),
    ("10.20.29.255", "lab", "low"),
    ("2001:db8:10:ffff::1", "hq", "high"),
    ("::ffff:10.20.30.40", "lab", "critical"),
])
def test_the_most_specific_prefix_wins(inventory: AssetInventory, ip: str, site: str, criticality: str) -> None:
    asset = inventory.lookup(ip)
    assert (asset.site, asset.criticality, asset.internal) == (site, criticality, True)


def test_a_listed_public_range_is_ours_so_internal(inventory: AssetInventory) -> None:
    assert inventory.lookup("203.0.113.9") == Asset("dmz", "web", "high", internal=True)


@pytest.mark.parametrize("ip", ["172.16.0.1", "172.31.255.255", "192.168.1.1", "100.64.0.1", "100.127.255.255",
                                "127.0.0.1", "169.254.1.1", "::1", "fe80::1", "fd00::1", "fc00::1",
                                "::ffff:192.168.0.1", "224.0.0.251", "239.255.255.250", "255.255.255.255",
                                "0.0.0.0", "0.1.2.3", "ff02::fb", "ff05::c", "::", "::ffff:224.0.0.251"])
def test_an_unlisted_private_address_is_internal(inventory: AssetInventory, ip: str) -> None:
    assert inventory.lookup(ip) is UNLISTED_INTERNAL
    assert is_internal_range(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "172.32.0.1", "172.15.255.255", "100.128.0.0", "100.63.255.255",
                                "192.169.0.1", "2001:db8:11::1", "fe00::1", "11.0.0.1", "223.255.255.255",
                                "240.0.0.1", "1.0.0.0", "::2", "feff::1"])
def test_an_unlisted_public_address_is_external(inventory: AssetInventory, ip: str) -> None:
    assert inventory.lookup(ip) is UNLISTED_EXTERNAL
    assert not is_internal_range(ip)


def test_an_asset_serialises_to_a_small_dict(inventory: AssetInventory) -> None:
    assert inventory.lookup("10.20.31.1").as_dict() == {"site": "lab", "owner": "research", "criticality": "low",
                                                        "internal": True}
    assert inventory.lookup("8.8.8.8").as_dict() == {"site": None, "owner": None, "criticality": None,
                                                     "internal": False}


def test_malformed_rows_are_skipped_and_counted_by_line(tmp_path: Path) -> None:
    text = ("cidr,site,owner,criticality\n"
            "10.0.0.0/8,hq,it,medium\n"
            "10.1.0.0/16,lab,research\n"  # 3: a cell too few
            "not-a-cidr,x,y,z\n"  # 4
            "\n"
            "# a comment\n"
            "10.2.0.1/16,x,y,z\n"  # 7: host bits set
            "10.3.0.0/16,a,b,c,d\n"  # 8: a cell too many
            "10.4.0.0/16,edge,,\n"
            "10.5.0.0/33,x,y,z\n")  # 10
    inventory = load_assets(write(tmp_path, text))
    assert (inventory.skipped, inventory.bad_lines) == (5, (3, 4, 7, 8, 10))
    assert len(inventory) == 2
    assert inventory.lookup("10.1.0.1").site == "hq"
    assert inventory.lookup("10.4.0.1") == Asset("edge", None, None, internal=True)


def test_columns_in_any_order_and_only_cidr_required(tmp_path: Path) -> None:
    inventory = load_assets(write(tmp_path, "\ufeffOwner, CIDR\nit,10.0.0.0/8\n,192.0.2.7\n"))
    assert inventory.lookup("10.9.9.9") == Asset(None, "it", None, internal=True)
    assert inventory.lookup("192.0.2.7") == Asset(None, None, None, internal=True)  # a bare address: a /32
    assert inventory.lookup("192.0.2.8") is UNLISTED_EXTERNAL


def test_a_prefix_listed_twice_keeps_its_last_row(tmp_path: Path) -> None:
    inventory = load_assets(write(tmp_path, "cidr,site\n10.0.0.0/8,old\n10.0.0.0/8,new\n"))
    assert (len(inventory), inventory.lookup("10.0.0.1").site) == (1, "new")


def test_equal_assets_are_held_once(tmp_path: Path) -> None:
    inventory = load_assets(write(tmp_path, "cidr,site,owner\n10.0.0.0/16,hq,it\n10.1.0.0/16,hq,it\n"))
    assert inventory.lookup("10.0.0.1") is inventory.lookup("10.1.0.1")


def test_an_inventory_of_only_a_header_lists_nothing(tmp_path: Path) -> None:
    inventory = load_assets(write(tmp_path, "cidr,site,owner,criticality\n"))
    assert len(inventory) == 0
    assert inventory.lookup("10.0.0.1") is UNLISTED_INTERNAL


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "no header row"),
    (b"network,site\n10.0.0.0/8,hq\n", "no 'cidr' column"),
    (b"cidr,site\n10.0.0.0/8,h\xe9\n", "can't decode"),
])
def test_a_file_that_cannot_be_read_is_refused_whole(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "assets.csv"
    path.write_bytes(content)
    with pytest.raises(LookupFileError, match=reason) as raised:
        load_assets(path)
    assert raised.value.path == str(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LookupFileError, match="No such file"):
        load_assets(tmp_path / "absent.csv")


def test_a_lookup_of_a_non_address_raises_value_error(inventory: AssetInventory) -> None:
    with pytest.raises(ValueError):
        inventory.lookup("not-an-ip")


def test_a_file_of_garbage_is_counted_whole_but_keeps_only_the_first_bad_lines(tmp_path: Path) -> None:
    rows = "".join(f"garbage-{i},x,y,z\n" for i in range(10_000))
    inventory = load_assets(write(tmp_path, "cidr,site,owner,criticality\n" + rows + "10.0.0.0/8,hq,it,low\n"))
    assert inventory.skipped == 10_000
    assert inventory.bad_lines == tuple(range(2, 2 + MAX_BAD_LINES_KEPT))
    assert len(inventory) == 1
