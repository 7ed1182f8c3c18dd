"""Read ohlcv-server's tables directly from the Iceberg catalog with pyiceberg.

    pip install 'pyiceberg[sql-sqlite,pyarrow]'
    python clients/python/read_with_pyiceberg.py ./data [table]

Prints the row count and the first rows of `market.<table>` (default: trades).
"""

import os
import sys
import warnings

from pyiceberg.catalog.sql import SqlCatalog


def main():
    data_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "./data")
    table_name = sys.argv[2] if len(sys.argv) > 2 else "trades"
    warnings.simplefilter("ignore")  # the SQL catalog's "v0 schema" notice
    catalog = SqlCatalog(
        "ohlcv",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )
    table = catalog.load_table(("market", table_name))
    rows = table.scan().to_arrow()
    print(f"market.{table_name}: {rows.num_rows} rows, snapshot {table.current_snapshot()}")
    for row in rows.slice(0, 10).to_pylist():
        print(row)


if __name__ == "__main__":
    main()
