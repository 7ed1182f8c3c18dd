"""Another engine writing to ohlcv-server's tables: pyiceberg appends rows, deletes rows or
overwrites them, the way a Spark or pyiceberg pipeline in the same lake would.

usage: foreign_writer.py DATA_DIR TABLE OP [ROWS_JSON]
  OP append:     ROWS_JSON is {"column": [values...]}; timestamps are UTC microseconds.
  OP delete:     ROWS_JSON is {"trade_id": [ids...]}: those trades are deleted (pyiceberg
                 rewrites the files holding them: an overwrite snapshot).
  OP overwrite:  ROWS_JSON as for append: the trades with these ids are replaced by these rows
                 (corrections; one overwrite snapshot).
  OP pos-delete: ROWS_JSON is {"trade_id": [ids...]}: those trades are deleted by position
                 delete files (merge-on-read, as Spark writes them with
                 write.delete.mode=merge-on-read), one per data file holding any, committed
                 in a delete manifest (pyiceberg has no public writer of them).
  OP expire:     every snapshot but the current one is expired.
  OP count:      prints the number of rows pyiceberg reads (every referenced file opened).
  OP read-at:    ROWS_JSON is {"snapshot_id": id, "exchange": e, "symbol": s}: prints, as
                 JSON, that series' bars [window_start_us, open, high, low, close, volume]
                 as the table held them at that snapshot, in window order (nothing committed).
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


def position_delete(table, trade_ids):
    import io
    import uuid

    import pyarrow.parquet as pq
    from delete_files import delete_producer
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.table.snapshots import Operation

    doomed = set(trade_ids)
    # The reserved field ids of a position delete file's columns (Iceberg spec).
    schema = pa.schema([
        pa.field("file_path", pa.string(), nullable=False,
                 metadata={b"PARQUET:field_id": b"2147483546"}),
        pa.field("pos", pa.int64(), nullable=False,
                 metadata={b"PARQUET:field_id": b"2147483545"}),
    ])
    with table.transaction() as tx:
        producer = delete_producer(table, tx, Operation.DELETE)
        for task in table.scan().plan_files():
            assert not task.delete_files, "one position delete per data file"
            data = task.file
            with table.io.new_input(data.file_path).open() as f:
                ids = pq.read_table(f, columns=["trade_id"]).column("trade_id").to_pylist()
            positions = [i for i, trade_id in enumerate(ids) if trade_id in doomed]
            if not positions:
                continue
            buf = io.BytesIO()
            pq.write_table(
                pa.table([pa.array([data.file_path] * len(positions)), pa.array(positions)],
                         schema=schema),
                buf,
            )
            path = f"{table.location()}/data/pos-delete-{uuid.uuid4()}.parquet"
            with table.io.new_output(path).create() as out:
                out.write(buf.getvalue())
            delete_file = DataFile.from_args(
                content=DataFileContent.POSITION_DELETES,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=data.partition,
                record_count=len(positions),
                file_size_in_bytes=len(buf.getvalue()),
            )
            delete_file.spec_id = data.spec_id
            producer.append_data_file(delete_file)
        producer.commit()


def main():
    data_dir, name, op = sys.argv[1], sys.argv[2], sys.argv[3]
    rows = json.load(open(sys.argv[4])) if len(sys.argv) > 4 else {}
    table = table_of(data_dir, name)
    if op == "append":
        table.append(rows_as_arrow(table, rows))
    elif op == "delete":
        table.delete(In("trade_id", rows["trade_id"]))
    elif op == "overwrite":
        table.overwrite(rows_as_arrow(table, rows), overwrite_filter=In("trade_id", rows["trade_id"]))
    elif op == "count":
        print(table.scan().to_arrow().num_rows)
        return
    elif op == "read-at":
        from pyiceberg.expressions import And, EqualTo

        scan = table.scan(
            row_filter=And(EqualTo("exchange", rows["exchange"]), EqualTo("symbol", rows["symbol"])),
            snapshot_id=rows["snapshot_id"],
        ).to_arrow()
        starts = scan.column("window_start").cast(pa.int64()).to_pylist()
        values = [scan.column(c).to_pylist() for c in ("open", "high", "low", "close", "volume")]
        print(json.dumps(sorted([s, *v] for s, *v in zip(starts, *values))))
        return
    elif op == "pos-delete":
        position_delete(table, rows["trade_id"])
    elif op == "expire":
        current = table.current_snapshot().snapshot_id
        old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current]
        table.maintenance.expire_snapshots().by_ids(old).commit()
    else:
        raise SystemExit(f"unknown op {op}")
    print(f"{op} {name}: snapshot {table.current_snapshot().snapshot_id}")


if __name__ == "__main__":
    main()
