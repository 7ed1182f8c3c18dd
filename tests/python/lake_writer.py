"""Another team's trades table in the same catalog, written with pyiceberg the way their Spark
pipeline would: other column names and types, its own partition spec, appends, deletes,
schema and partition evolution.

usage: lake_writer.py DATA_DIR OP [JSON]
  The catalog is the SQLite catalog of DATA_DIR, or, when LAKE_REST_URI is set, that Iceberg
  REST catalog (SigV4, keys from AWS_*) with its files on the S3 endpoint LAKE_S3_ENDPOINT.
  With LAKE_SQL_WAREHOUSE (s3://bucket/prefix) the SQLite catalog keeps its tables there, on
  LAKE_S3_ENDPOINT (the bucket is created when missing).
  create              (LAKE_TABLE_PROPERTIES: JSON table properties, e.g. format-version 1,
                      write.metadata.metrics.default none for files without statistics)
                      lake.gold_crypto_trades: trade_time timestamp (no zone), px decimal(18,8),
                      qty double, id long, pair string, is_buyer_maker boolean; hour(trade_time)
  append JSON         {"trade_time": [us...], "px": [...], "qty": [...], "id": [...],
                       "pair": [...], "is_buyer_maker": [...]}, in the table's current names
  delete JSON         {"id": [...]}
  overwrite JSON      rows as for append: the trades with these ids are replaced by them
  compact             every live file rewritten with the same rows (a `replace` snapshot)
  expire              every snapshot but the current one expired
  unpartition         drop the hourly partition field (new files are unpartitioned)
  respec NAME         replace the partition spec by one of SPECS (identity and bucket,
                      truncate and month, year): every later file is written with it
  evolve              rename px -> price_usd, add column venue, partition by day(trade_time)
  replace             drop the table and create it again, empty (as `create`)
  count TABLE         print the number of rows pyiceberg reads from TABLE (`namespace.name`)
  eq-delete JSON      {"id": [...], "hour": [...]}: an equality delete file on `id` per hour
                      partition (the table must be partitioned by hour(trade_time)), committed
                      in a delete manifest as Flink's upserts do (pyiceberg itself writes
                      none: its manifest writer is told to write delete content)
  duckdb-delete JSON  {"id": [...]}: DuckDB deletes those trades through the REST catalog
                      (OAuth2), writing position delete files (merge-on-read) as Spark would
  duckdb-count TABLE  print the number of rows DuckDB reads from TABLE through the REST catalog
"""

import datetime
import decimal
import json
import os
import sys
import warnings

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import In
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    TruncateTransform,
    YearTransform,
)

# Partition specs another team might use, by name (source column, transform, field name).
SPECS = {
    "identity-bucket": [
        ("pair", IdentityTransform(), "pair"),
        ("id", BucketTransform(8), "id_bucket"),
    ],
    "truncate-month": [
        ("pair", TruncateTransform(3), "pair_trunc"),
        ("trade_time", MonthTransform(), "trade_month"),
    ],
    "year": [("trade_time", YearTransform(), "trade_year")],
}
from pyiceberg.types import (
    BooleanType,
    DecimalType,
    DoubleType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
)

NAME = ("lake", "gold_crypto_trades")


def catalog(data_dir):
    if os.environ.get("LAKE_REST_URI"):
        from pyiceberg.catalog import load_catalog

        return load_catalog(
            "lake",
            type="rest",
            uri=os.environ["LAKE_REST_URI"],
            warehouse=os.environ.get("LAKE_WAREHOUSE", "s3://warehouse"),
            **{
                "rest.sigv4-enabled": "true",
                "rest.signing-region": "us-east-1",
                "rest.signing-name": "s3tables",
                "s3.endpoint": os.environ["LAKE_S3_ENDPOINT"],
                "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "s3.region": "us-east-1",
            },
        )
    warnings.simplefilter("ignore")  # pyiceberg warns about the SQL catalog's v0 schema
    s3_warehouse = os.environ.get("LAKE_SQL_WAREHOUSE")
    if s3_warehouse:
        return SqlCatalog(
            "ohlcv",
            uri=f"sqlite:///{data_dir}/catalog.db",
            warehouse=s3_warehouse,
            **{
                "s3.endpoint": os.environ["LAKE_S3_ENDPOINT"],
                "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "s3.region": "us-east-1",
            },
        )
    return SqlCatalog(
        "ohlcv",
        uri=f"sqlite:///{data_dir}/catalog.db",
        warehouse=f"file://{data_dir}/warehouse",
    )


def ensure_bucket(location):
    """Creates the bucket of an s3:// location if it does not exist, as an operator would."""
    import boto3

    bucket = location.removeprefix("s3://").split("/", 1)[0]
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["LAKE_S3_ENDPOINT"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)


def create(cat):
    schema = Schema(
        NestedField(1, "trade_time", TimestampType(), required=False),
        NestedField(2, "px", DecimalType(18, 8), required=False),
        NestedField(3, "qty", DoubleType(), required=False),
        NestedField(4, "id", LongType(), required=False),
        NestedField(5, "pair", StringType(), required=False),
        NestedField(6, "is_buyer_maker", BooleanType(), required=False),
    )
    spec = PartitionSpec(
        PartitionField(source_id=1, field_id=1000, transform=HourTransform(), name="trade_hour")
    )
    try:
        cat.create_namespace("lake")
    except Exception:  # noqa: BLE001 - it exists
        pass
    properties = json.loads(os.environ.get("LAKE_TABLE_PROPERTIES", "{}"))
    cat.create_table(NAME, schema=schema, partition_spec=spec, properties=properties)


def append(table, rows):
    table.append(arrow_rows(table, rows))


def overwrite(table, rows):
    """Corrections as one `overwrite` snapshot: the trades with these ids are replaced by
    these rows (pyiceberg rewrites the files holding the old ones and adds the new)."""
    table.overwrite(arrow_rows(table, rows), overwrite_filter=In("id", rows["id"]))


def compact(table):
    """Rewrites every live data file into new files holding the same rows, committed as a
    `replace` snapshot, as Spark's rewrite_data_files does: no row changes."""
    from pyiceberg.io.pyarrow import _dataframe_to_data_files
    from pyiceberg.table.snapshots import Operation, Summary
    from pyiceberg.table.update.snapshot import _OverwriteFiles

    class Rewrite(_OverwriteFiles):
        # pyiceberg computes summaries for append/overwrite/delete only: compute the totals
        # as an overwrite's, then name the operation what it is.
        def _summary(self, snapshot_properties):
            summary = super()._summary(snapshot_properties)
            return Summary(operation=Operation.REPLACE, **summary._additional_properties)

    old = [task.file for task in table.scan().plan_files()]
    assert all(not task.delete_files for task in table.scan().plan_files()), "deletes attached"
    rows = table.scan().to_arrow()
    with table.transaction() as tx:
        producer = Rewrite(operation=Operation.OVERWRITE, transaction=tx, io=table.io)
        for data_file in old:
            producer.delete_data_file(data_file)
        for data_file in _dataframe_to_data_files(
            table_metadata=tx.table_metadata, df=rows, io=table.io,
            write_uuid=producer.commit_uuid,
        ):
            producer.append_data_file(data_file)
        producer.commit()


def arrow_rows(table, rows):
    schema = table.schema().as_arrow()
    columns = {}
    for field in schema:
        values = rows.get(field.name)
        if values is None:
            columns[field.name] = pa.nulls(len(rows["id"]), field.type)
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = pa.array(
                [datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=v) for v in values],
                field.type,
            )
        elif pa.types.is_decimal(field.type):
            columns[field.name] = pa.array(
                [None if v is None else decimal.Decimal(repr(v)) for v in values], field.type
            )
        else:
            columns[field.name] = pa.array(values, field.type)
    return pa.table(columns, schema=schema)


def evolve(table):
    with table.update_schema() as update:
        update.rename_column("px", "price_usd")
        update.add_column("venue", StringType())
    with table.update_spec() as update:
        if any(f.name == "trade_hour" for f in table.spec().fields):
            update.remove_field("trade_hour")
        update.add_field("trade_time", DayTransform(), "trade_day")


def duckdb_rest():
    """DuckDB attached to the REST catalog as `lk`, its S3 files reachable."""
    import duckdb
    import duckdb_ext

    ext_dir = os.path.join(list(duckdb_ext.__path__)[0], "extensions")
    con = duckdb.connect(
        config={"extension_directory": ext_dir, "autoinstall_known_extensions": False}
    )
    con.execute("LOAD avro; LOAD httpfs; LOAD iceberg;")
    endpoint = os.environ["LAKE_S3_ENDPOINT"].removeprefix("http://")
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    con.execute(
        f"CREATE SECRET (TYPE s3, KEY_ID '{key}', SECRET '{secret}', ENDPOINT '{endpoint}', "
        "URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')"
    )
    uri = os.environ["LAKE_REST_URI"]
    con.execute(
        f"CREATE SECRET ice (TYPE iceberg, CLIENT_ID '{key}', CLIENT_SECRET '{secret}', "
        f"OAUTH2_SERVER_URI '{uri}/v1/oauth/tokens')"
    )
    warehouse = os.environ.get("LAKE_WAREHOUSE", "s3://warehouse").removeprefix("s3://")
    con.execute(f"ATTACH '{warehouse}' AS lk (TYPE iceberg, ENDPOINT '{uri}', SECRET ice)")
    return con


def eq_delete(table, rows):
    import io
    import uuid

    import pyarrow.parquet as pq
    from delete_files import delete_producer
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.table.snapshots import Operation
    from pyiceberg.typedef import Record

    id_field = table.schema().find_field("id")
    spec = table.spec()
    by_hour = {}
    for trade_id, hour in zip(rows["id"], rows["hour"]):
        by_hour.setdefault(hour, []).append(trade_id)
    with table.transaction() as tx:
        producer = delete_producer(table, tx, Operation.OVERWRITE)
        field = pa.field(
            "id", pa.int64(), nullable=True,
            metadata={b"PARQUET:field_id": str(id_field.field_id).encode()},
        )
        for hour, ids in sorted(by_hour.items()):
            buf = io.BytesIO()
            pq.write_table(pa.table([pa.array(ids, pa.int64())], schema=pa.schema([field])), buf)
            path = f"{table.location()}/data/eq-delete-{uuid.uuid4()}.parquet"
            with table.io.new_output(path).create() as out:
                out.write(buf.getvalue())
            data_file = DataFile.from_args(
                content=DataFileContent.EQUALITY_DELETES,
                file_path=path,
                file_format=FileFormat.PARQUET,
                partition=Record(hour),
                record_count=len(ids),
                file_size_in_bytes=len(buf.getvalue()),
                equality_ids=[id_field.field_id],
            )
            data_file.spec_id = spec.spec_id
            producer.append_data_file(data_file)
        producer.commit()


def duckdb_delete(ids):
    con = duckdb_rest()
    listed = ", ".join(str(int(i)) for i in ids)
    con.execute(f"DELETE FROM lk.lake.gold_crypto_trades WHERE id IN ({listed})")


def main():
    data_dir, op = sys.argv[1], sys.argv[2]
    rows = (
        json.load(open(sys.argv[3]))
        if len(sys.argv) > 3 and op not in ("count", "duckdb-count", "respec")
        else {}
    )
    cat = catalog(data_dir)
    if op == "create":
        if os.environ.get("LAKE_SQL_WAREHOUSE"):
            ensure_bucket(os.environ["LAKE_SQL_WAREHOUSE"])
        create(cat)
        return
    if op == "count":
        print(cat.load_table(sys.argv[3]).scan().to_arrow().num_rows)
        return
    if op == "duckdb-count":
        print(duckdb_rest().execute(f"select count(*) from lk.{sys.argv[3]}").fetchone()[0])
        return
    if op == "duckdb-delete":
        duckdb_delete(rows["id"])
        return
    if op == "replace":
        cat.drop_table(NAME)
        create(cat)
        return
    table = cat.load_table(NAME)
    if op == "append":
        append(table, rows)
    elif op == "delete":
        table.delete(In("id", rows["id"]))
    elif op == "overwrite":
        overwrite(table, rows)
    elif op == "compact":
        compact(table)
    elif op == "expire":
        current = table.current_snapshot().snapshot_id
        old = [s.snapshot_id for s in table.snapshots() if s.snapshot_id != current]
        table.maintenance.expire_snapshots().by_ids(old).commit()
    elif op == "eq-delete":
        eq_delete(table, rows)
    elif op == "respec":
        name = sys.argv[3]
        with table.update_spec() as update:
            for field in table.spec().fields:
                update.remove_field(field.name)
        with table.update_spec() as update:
            for column, transform, field in SPECS[name]:
                update.add_field(column, transform, field)
    elif op == "unpartition":
        with table.update_spec() as update:
            update.remove_field("trade_hour")
    elif op == "evolve":
        evolve(table)
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
