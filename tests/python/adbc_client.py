"""What an ADBC user does against a running ohlcv-server (driven by tests/adbc.rs).

usage: adbc_client.py grpc://HOST:PORT EXPECTED_1M_BARS
Exit status 0 when every check passes.
"""

import sys
import warnings

import adbc_driver_flightsql.dbapi as flight_sql

uri, expected = sys.argv[1], int(sys.argv[2])
warnings.simplefilter("ignore")  # "Cannot disable autocommit": Flight SQL has no transactions
conn = flight_sql.connect(uri)

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

objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
tables = {
    (c["catalog_name"], s["db_schema_name"], t["table_name"])
    for c in objects
    for s in c["catalog_db_schemas"]
    for t in s["db_schema_tables"]
}
for name in ["trades", "ohlcv_1m", "ohlcv_5m", "ohlcv_30m", "ohlcv_1h", "ohlcv_1d"]:
    assert ("ohlcv", "market", name) in tables, f"{name} missing from {tables}"

schema = conn.adbc_get_table_schema("ohlcv_1d", catalog_filter="ohlcv", db_schema_filter="market")
assert schema.names[:3] == ["exchange", "symbol", "window_start"], schema.names

print(f"adbc: {n} 1m bars, {table.num_rows} 5m rows, {len(tables)} tables")
