"""ohlcv-server from Python with ADBC, pandas and polars: ingest a Parquet file of trades, query
candles into pandas and polars, and run a prepared statement with parameters.

usage: python adbc_pandas_polars.py [grpc://127.0.0.1:50051] [USER PASSWORD]

Needs: pip install adbc-driver-flightsql pyarrow pandas polars
Against `ohlcv-server serve --demo` (no users) the URI is all it takes. Ingesting needs the
`writer` role when the server has users.
"""

import sys
import tempfile
import warnings
from datetime import datetime, timedelta, timezone

import adbc_driver_flightsql.dbapi as flight_sql
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

uri = sys.argv[1] if len(sys.argv) > 1 else "grpc://127.0.0.1:50051"
credentials = {"username": sys.argv[2], "password": sys.argv[3]} if len(sys.argv) > 3 else {}
warnings.simplefilter("ignore")  # ADBC warns that Flight SQL has no transactions to disable

conn = flight_sql.connect(uri, db_kwargs=credentials)
cur = conn.cursor()

# 1. Ingest a Parquet file of trades into market.trades (validated like `ohlcv-server load`:
#    one bad row refuses the whole file). The next build turns them into bars.
start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
trades = pa.table(
    {
        "exchange": ["example"] * 120,
        "symbol": ["DOGE-USD"] * 120,
        "trade_id": [f"ex-{start.timestamp():.0f}-{i}" for i in range(120)],
        "ts": pa.array([start + timedelta(seconds=30 * i) for i in range(120)], pa.timestamp("us", tz="UTC")),
        "price": [0.1 + i / 10_000 for i in range(120)],
        "quantity": [1000.0] * 120,
        "side": ["buy", "sell"] * 60,
    }
)
with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
    pq.write_table(trades, f.name)
    ingested = cur.adbc_ingest("trades", pq.read_table(f.name), mode="append")
print(f"ingested {ingested} trades from a Parquet file")

# 2. Candles into pandas: the latest 1m bars of the busiest symbol.
cur.execute(
    "select exchange, symbol, count(*) as bars from ohlcv_1m "
    "group by exchange, symbol order by bars desc, exchange, symbol limit 1"
)
row = cur.fetchone()
if row is None:
    sys.exit("no 1m bars yet: start the server with --demo or load and build some trades")
exchange, symbol, _ = row
cur.execute(
    f"select window_start, open, high, low, close, volume from ohlcv_1m "
    f"where exchange = '{exchange}' and symbol = '{symbol}' order by window_start desc limit 30"
)
df = cur.fetch_df()
print(f"pandas: {len(df)} 1m candles of {exchange} {symbol}, last close {df['close'].iloc[0]}")

# 3. The same through a prepared statement with parameters, into polars.
cur.execute(
    "select window_start, open, high, low, close, volume, trade_count from ohlcv_5m "
    "where exchange = $1 and symbol = $2 order by window_start",
    parameters=(exchange, symbol),
)
candles = pl.from_arrow(cur.fetch_arrow_table())
summary = candles.select(
    pl.len().alias("bars"), pl.col("high").max().alias("high"), pl.col("trade_count").sum().alias("trades")
)
print(f"polars: {summary.row(0)[0]} 5m candles of {exchange} {symbol}; high {summary.row(0)[1]}, {summary.row(0)[2]} trades")

cur.close()
conn.close()
