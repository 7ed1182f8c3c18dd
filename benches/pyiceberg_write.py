"""Baseline for benches/write.rs: the same writes done by pyiceberg.

usage: pyiceberg_write.py WORK_DIR RUNS   (prints median seconds per operation as JSON)
"""

import json
import sys
import time
import warnings

from datetime import timedelta

import pyarrow.parquet as pq
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    DoubleType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

warnings.simplefilter("ignore")
work, runs = sys.argv[1], int(sys.argv[2])

COLUMNS = [
    ("exchange", StringType(), True), ("symbol", StringType(), True),
    ("window_start", TimestamptzType(), True), ("window_end", TimestamptzType(), True),
    ("open", DoubleType(), False), ("high", DoubleType(), False), ("low", DoubleType(), False),
    ("close", DoubleType(), False), ("volume", DoubleType(), False),
    ("quote_volume", DoubleType(), False), ("vwap", DoubleType(), False),
    ("trade_count", LongType(), False), ("buy_volume", DoubleType(), False),
    ("first_trade_ts", TimestamptzType(), False), ("last_trade_ts", TimestamptzType(), False),
    ("revision", IntegerType(), False), ("built_at", TimestamptzType(), False),
]
SCHEMA = Schema(
    *[NestedField(i + 1, n, t, required=r) for i, (n, t, r) in enumerate(COLUMNS)],
    identifier_field_ids=[1, 2, 3],
)
SPEC = PartitionSpec(PartitionField(3, 1000, DayTransform(), "window_start_day"))


def table(name, run):
    cat = SqlCatalog(
        "bench", uri=f"sqlite:///{work}/py-{name}-{run}.db", warehouse=f"file://{work}/py-wh-{run}"
    )
    cat.create_namespace_if_not_exists("market")
    return cat.create_table(f"market.{name}", schema=SCHEMA, partition_spec=SPEC)


def read(name):
    return pq.read_table(f"{work}/{name}.parquet").cast(SCHEMA.as_arrow())


append, day = read("append"), read("day")
minute_base, minute = read("minute_base"), read("minute")
keys = ["exchange", "symbol", "window_start"]
times = {"append": [], "day upsert": [], "minute upsert": []}
for run in range(runs):
    t = table("bars", run)
    start = time.perf_counter()
    t.append(append)
    times["append"].append(time.perf_counter() - start)
    # pyiceberg's upsert() joins in Python and did not finish a 144k-row upsert into 1M rows in
    # 5 minutes here; the day is replaced the way a batch job would: delete the day's rows and
    # append the new ones in one overwrite.
    day_start = day.column("window_start")[0].as_py()
    start = time.perf_counter()
    t.overwrite(
        day,
        overwrite_filter=And(
            GreaterThanOrEqual("window_start", day_start.isoformat()),
            LessThan("window_start", (day_start + timedelta(days=1)).isoformat()),
        ),
    )
    times["day upsert"].append(time.perf_counter() - start)

    t = table("minute", run)
    t.append(minute_base)
    start = time.perf_counter()
    t.upsert(minute, join_cols=keys)
    times["minute upsert"].append(time.perf_counter() - start)

print(json.dumps({k: sorted(v)[len(v) // 2] for k, v in times.items()}))
