"""Whether a table found under the sink's name is the sink's: pure logic, no server."""

from __future__ import annotations

from etl.sinks.copy_format import COLUMNS
from etl.sinks.timescale_schema import COLUMN_TYPES, column_mismatches


def test_the_sinks_own_table_fits_with_extra_columns_and_without_the_columns_added_later() -> None:
    assert tuple(COLUMN_TYPES) == COLUMNS  # every column the COPY data holds is checked
    assert column_mismatches(dict(COLUMN_TYPES)) == []
    before_dst_rdns = {name: kind for name, kind in COLUMN_TYPES.items() if name != "dst_rdns"}
    assert column_mismatches({**before_dst_rdns, "created_at": "timestamp with time zone", "x": "int"}) == []


def test_missing_columns_and_other_types_are_each_named() -> None:
    columns = {**COLUMN_TYPES, "metadata": "json", "dst_rdns": "character varying(10)"}
    del columns["id"], columns["source"]
    assert column_mismatches(columns) == [
        "no column id, source", "dst_rdns is character varying(10), not text", "metadata is json, not jsonb"]


def test_a_table_from_before_the_lookup_columns_fits_and_a_wrong_type_of_one_is_named() -> None:
    lookups = ("intel", "src_asset", "dst_asset", "dst_geo", "intel_match")
    before = {name: kind for name, kind in COLUMN_TYPES.items() if name not in lookups}
    assert column_mismatches(before) == []
    assert column_mismatches({**COLUMN_TYPES, "intel_match": "text"}) == ["intel_match is text, not boolean"]
