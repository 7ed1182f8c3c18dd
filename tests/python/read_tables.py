"""Reads ohlcv-server's Iceberg tables with pyiceberg and DuckDB and compares them, row for row,
with what ohlcv-server itself returns (written by tests/interop.rs to expected.json).

usage: read_tables.py DATA_DIR EXPECTED_JSON
Exit status 0 when both engines agree with every table, 1 with a diff otherwise.
"""

import json
import os
import sys
import warnings

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog


def duckdb_connection():
    import duckdb_ext  # the extension packages ship the binaries; nothing is downloaded

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(
        config={"extension_directory": ext_dir, "autoinstall_known_extensions": False}
    )
    con.execute("LOAD avro; LOAD iceberg;")
    return con


def normalise(table: pa.Table, columns):
    out = []
    for col in columns:
        arr = table.column(col)
        if pa.types.is_timestamp(arr.type):
            if arr.type.tz is None:
                raise AssertionError(f"{col} read back without a time zone: {arr.type}")
            arr = pc.cast(pc.cast(arr, pa.timestamp("us", tz="UTC")), pa.int64())
        out.append(arr.to_pylist())
    return sorted(zip(*out))


def main():
    data_dir, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        expected = json.load(f)
    warnings.simplefilter("ignore")  # pyiceberg warns about the SQL catalog's v0 schema
    catalog = SqlCatalog(
        "ohlcv",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )
    con = duckdb_connection()
    failures = []
    for name, spec in expected.items():
        columns = spec["columns"]
        want = sorted(tuple(r) for r in spec["rows"])
        table = catalog.load_table(("market", name))
        got_py = normalise(table.scan().to_arrow(), columns)
        select = ", ".join(
            f"epoch_us({c})" if c in spec["timestamps"] else c for c in columns
        )
        got_duck = sorted(
            con.execute(
                f"SELECT {select} FROM iceberg_scan('{table.metadata_location}')"
            ).fetchall()
        )
        before = len(failures)
        for engine, got in (("pyiceberg", got_py), ("duckdb", got_duck)):
            if got != want:
                missing = [r for r in want if r not in set(got)][:5]
                extra = [r for r in got if r not in set(want)][:5]
                failures.append(
                    f"{engine} {name}: {len(got)} rows, expected {len(want)}; "
                    f"missing {missing}; unexpected {extra}"
                )
        if len(failures) == before:
            print(f"{name}: {len(want)} rows equal in pyiceberg and duckdb")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
