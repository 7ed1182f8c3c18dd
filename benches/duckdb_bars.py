"""Baseline for benches/kernel.rs: the same 1m bars, with the same dedupe and open/close rules,
computed by DuckDB from the same Parquet file.

usage: duckdb_bars.py FILE.parquet RUNS   (prints JSON: median seconds and result checksums)
"""

import json
import sys
import time

import duckdb

path, runs = sys.argv[1], int(sys.argv[2])
QUERY = f"""
WITH deduped AS (
  SELECT exchange, symbol, trade_id, ts, price, quantity, side
  FROM read_parquet('{path}')
  QUALIFY row_number() OVER (
    PARTITION BY exchange, symbol, trade_id ORDER BY ts, price, quantity, side = 'buy') = 1
)
SELECT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, ts) AS window_start,
       arg_min(price, (ts, trade_id)) AS open, max(price) AS high, min(price) AS low,
       arg_max(price, (ts, trade_id)) AS close, sum(quantity) AS volume,
       sum(price * quantity) AS quote_volume, sum(price * quantity) / sum(quantity) AS vwap,
       count(*) AS trade_count, sum(CASE WHEN side = 'buy' THEN quantity ELSE 0 END) AS buy_volume,
       min(ts) AS first_trade_ts, max(ts) AS last_trade_ts
FROM deduped
GROUP BY ALL
"""

con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
times = []
result = None
for _ in range(runs):
    start = time.perf_counter()
    result = con.execute(QUERY).fetch_arrow_table()
    times.append(time.perf_counter() - start)
check = con.execute(
    "SELECT count(*), sum(trade_count), sum(open), sum(close), sum(high), sum(low) FROM result"
).fetchone()
print(json.dumps({
    "seconds": sorted(times)[len(times) // 2],
    "bars": check[0], "trades": int(check[1]),
    "open": check[2], "close": check[3], "high": check[4], "low": check[5],
}))
