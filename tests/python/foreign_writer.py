"""Another engine writing to ohlcv-server's tables: pyiceberg appends rows, deletes rows or
overwrites them, the way a Spark or pyiceberg pipeline in the same lake would.

usage: foreign_writer.py DATA_DIR TABLE OP [ROWS_JSON]
  OP append:     ROWS_JSON is {"column": [values...]}; timestamps are UTC microseconds.
  OP delete:     ROWS_JSON is {"trade_id": [ids...]}: those trades are deleted (pyiceberg
                 rewrites the files holding them: an overwrite snapshot).
  OP expire:     every snapshot but the current one is expired.
  OP count:      prints the number of rows pyiceberg reads (every referenced file opened).
Each call is one pyiceberg commit on table market.TABLE of the SQLite catalog under DATA_DIR,
or, when FOREIGN_CATALOG_URI (an SQLAlchemy URL) is set, of that SQL catalog (PostgreSQL),
named FOREIGN_CATALOG_NAME.
"""

import json
import os
import sys
import warnings

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import In


def table_of(data_dir, name):
    warnings.simplefilter("ignore")  # pyiceberg warns about the SQL catalog's v0 schema
    catalog = SqlCatalog(
        os.environ.get("FOREIGN_CATALOG_NAME", "ohlcv"),
        uri=os.environ.get("FOREIGN_CATALOG_URI", f"sqlite:///{data_dir}/catalog.db"),
        warehouse=f"file://{data_dir}/warehouse",
    )
    return catalog.load_table(("market", name))


def rows_as_arrow(table, rows):
    schema = table.schema().as_arrow()
    columns = {}
    for field in schema:
        values = rows.get(field.name)
        if values is None:
            n = len(next(iter(rows.values())))
            columns[field.name] = pa.nulls(n, field.type)
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = pa.array(values, pa.int64()).cast(field.type)
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=schema)


def main():
    data_dir, name, op = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = json.load(open(sys.argv[4])) if len(sys.argv) > 4 else {}
    table = table_of(data_dir, name)
    if op == "append":
        table.append(rows_as_arrow(table, rows))
    elif op == "delete":
        table.delete(In("trade_id", rows["trade_id"]))
    elif op == "count":
        print(table.scan().to_arrow().num_rows)
        return
    elif op == "expire":
        current = table.current_snapshot().snapshot_id
        old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current]
        table.maintenance.expire_snapshots().by_ids(old).commit()
    else:
        raise SystemExit(f"unknown op {op}")
    print(f"{op} {name}: snapshot {table.current_snapshot().snapshot_id}")


if __name__ == "__main__":
    main()
