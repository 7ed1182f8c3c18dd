"""What an ADBC user does against a running ohlcv-server (driven by tests/adbc.rs).

usage: adbc_client.py grpc://HOST:PORT EXPECTED_1M_BARS
The server has users will (writer, password will-pw) and rita (reader, rita-pw).
Exit status 0 when every check passes.
"""

import sys
import warnings
from datetime import datetime, timedelta, timezone

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa

uri, expected = sys.argv[1], int(sys.argv[2])
warnings.simplefilter("ignore")  # "Cannot disable autocommit": Flight SQL has no transactions


def connect(user=None):
    kwargs = {"username": user, "password": f"{user}-pw"} if user else {}
    return flight_sql.connect(uri, db_kwargs=kwargs)


def fails_with(fn, *codes):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the driver's error classes vary by status
        text = str(e)
        assert any(c in text for c in codes), f"expected one of {codes}, got: {text}"
        return
    raise AssertionError(f"expected a failure with {codes}")


# Without credentials nothing is served.
anonymous = connect()
fails_with(lambda: anonymous.cursor().execute("select 1"), "Unauthenticated", "UNAUTHENTICATED")

# The Go driver sends "user:password" in base64 without padding: every length modulo 3 logs in.
for user in ("rita", "al", "ada", "will"):
    c = connect(user).cursor()
    c.execute("select 1")
    assert c.fetchone() == (1,), user
    c.close()
fails_with(
    lambda: flight_sql.connect(uri, db_kwargs={"username": "al", "password": "not-al-pw"})
    .cursor()
    .execute("select 1"),
    "Unauthenticated",
    "UNAUTHENTICATED",
)

conn = connect("will")
cur = conn.cursor()
cur.execute("select count(*) as n from ohlcv_1m")
(n,) = cur.fetchone()
assert n == expected, f"ohlcv_1m has {n} bars through ADBC, expected {expected}"

cur.execute(
    "select window_start, open, high, low, close, volume from ohlcv.market.ohlcv_5m "
    "where symbol = 'BTC-USD' order by window_start"
)
table = cur.fetch_arrow_table()
assert table.num_rows > 0 and str(table.schema.field("window_start").type) == "timestamp[us, tz=UTC]"

# Prepared statements with parameters (ADBC prepares and binds).
for symbol, count in [("BTC-USD", expected), ("ETH-USD", 0)]:
    cur.execute("select count(*) from ohlcv_1m where symbol = $1 and volume > $2", parameters=(symbol, 0.0))
    (got,) = cur.fetchone()
    assert got == count, f"{symbol}: {got} bars, expected {count}"

objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = {
    (c["catalog_name"], s["db_schema_name"], t["table_name"])
    for c in objects
    for s in c["catalog_db_schemas"]
    for t in s["db_schema_tables"]
}
for name in ["trades", "ohlcv_1m", "ohlcv_5m", "ohlcv_30m", "ohlcv_1h", "ohlcv_1d"]:
    assert ("ohlcv", "market", name) in tables, f"{name} missing from {tables}"
assert ("ohlcv", "system", "jobs") in tables

# candles(): 15m rolled up from 5m into pandas; a prepared call with every argument bound, into
# polars. The deployment has 120 BTC-USD trades, one every 30 s from 2024-01-01T00:00Z.
cur.execute("select * from candles('kraken', 'BTC-USD', '15m', '2024-01-01T00:00:00Z', '2024-01-01T02:00:00Z')")
df = cur.fetch_df()
assert df["trade_count"].tolist() == [30] * 4, df
assert df["is_final"].all() and not df["is_synthetic"].any()
assert (df["open"].iloc[0], df["close"].iloc[-1]) == (100.0, 219.0)
import polars as pl

utc = timezone.utc
cur.execute(
    "select * from candles($1, $2, $3, $4, $5)",
    parameters=("kraken", "BTC-USD", "1h", datetime(2024, 1, 1, tzinfo=utc), datetime(2024, 1, 1, 2, tzinfo=utc)),
)
hourly = pl.from_arrow(cur.fetch_arrow_table())
assert hourly["trade_count"].to_list() == [120] and hourly["high"].to_list() == [219.0], hourly

# Polled as a chart polls: the repeats get the kept answer, the same table.
def answer_hits():
    cur.execute("select answer_hits from system.cache_stats")
    return cur.fetchone()[0]

poll = "select * from candles('kraken', 'BTC-USD', '5m', '2024-01-01T00:00:00Z', '2024-01-01T02:00:00Z')"
cur.execute(poll)
polled = cur.fetch_arrow_table()
hits = answer_hits()
for _ in range(3):
    cur.execute(poll)
    assert cur.fetch_arrow_table().equals(polled)
assert answer_hits() == hits + 3, (hits, answer_hits())

schema = conn.adbc_get_table_schema("ohlcv_1d", catalog_filter="ohlcv", db_schema_filter="market")
assert schema.names[:3] == ["exchange", "symbol", "window_start"], schema.names

# Bulk ingest into market.trades.
t0 = datetime(2024, 1, 1, 2, tzinfo=timezone.utc)
trades = pa.table(
    {
        "exchange": ["kraken"] * 50,
        "symbol": ["ETH-USD"] * 50,
        "trade_id": [f"py-{i}" for i in range(50)],
        "ts": pa.array([t0 + timedelta(seconds=i) for i in range(50)], pa.timestamp("us", tz="UTC")),
        "price": [2000.0 + i for i in range(50)],
        "quantity": [0.1] * 50,
        "side": ["buy", "sell"] * 25,
    }
)
cur.execute("select count(*) from trades")
(before,) = cur.fetchone()
assert cur.adbc_ingest("trades", trades, mode="append") in (50, -1)
cur.execute("select count(*) from trades")
(after,) = cur.fetchone()
assert after == before + 50, (before, after)

# A bad row refuses the whole batch, naming it.
bad = trades.set_column(4, "price", pa.array([1.0] * 49 + [-5.0]))
fails_with(lambda: cur.adbc_ingest("trades", bad, mode="append"), "row 49")
cur.execute("select count(*) from trades")
assert cur.fetchone()[0] == after, "a refused ingest wrote nothing"

# Implausible rows (year 9999, a subnormal price, a 10 kB exchange) are refused by row number.
far = trades.set_column(
    3, "ts", pa.array([t0] * 49 + [datetime(9999, 1, 1, tzinfo=timezone.utc)], pa.timestamp("us", tz="UTC"))
)
fails_with(lambda: cur.adbc_ingest("trades", far, mode="append"), "max_future_secs")
tiny = trades.set_column(4, "price", pa.array([5e-324] + [1.0] * 49))
fails_with(lambda: cur.adbc_ingest("trades", tiny, mode="append"), "min_price")
huge = trades.set_column(0, "exchange", pa.array(["x" * 10_000] + ["kraken"] * 49))
fails_with(lambda: cur.adbc_ingest("trades", huge, mode="append"), "bytes long")
cur.execute("select count(*) from trades")
assert cur.fetchone()[0] == after, "refused ingests wrote nothing"

# A reader may query but not ingest.
reader = connect("rita").cursor()
reader.execute("select count(*) from ohlcv_1m")
assert reader.fetchone()[0] == expected
fails_with(lambda: reader.adbc_ingest("trades", trades, mode="append"), "PermissionDenied", "PERMISSION_DENIED", "ermission")

print(f"adbc: {n} 1m bars, {table.num_rows} 5m rows, {len(tables)} tables, ingested {after - before}")
