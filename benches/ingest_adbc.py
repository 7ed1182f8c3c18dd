"""Bulk ingest of trades through Python ADBC (`cursor.adbc_ingest`, one DoPut) into a release
server: trades/s end to end, validation included (every row checked against the plausibility
limits; files written every 250,000 rows; one commit at the end), for one client sending
batches of 100,000 rows. Also the server's CPU seconds per million trades. Each run starts
when the server is idle again after the builds the previous run's trades triggered.

    cargo build --release
    python3 benches/ingest_adbc.py --binary target/release/ohlcv-server
"""

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
import warnings

import adbc_driver_flightsql.dbapi as flightsql
import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from candles_adbc import cpu_seconds, serve  # noqa: E402


def trades(n, batch, first_id):
    """`n` trades of the last hour in batches of `batch` rows, 20 series."""
    now_us = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6)
    rng = np.random.default_rng(7)
    symbols = np.array([f"SYM{i}-USD" for i in range(10)])
    batches = []
    for start in range(0, n, batch):
        k = min(batch, n - start)
        ids = np.arange(first_id + start, first_id + start + k)
        batches.append(
            pa.record_batch(
                {
                    "exchange": pa.array(np.where(ids % 2 == 0, "binance", "kraken")),
                    "symbol": pa.array(symbols[ids % 10]),
                    "trade_id": pa.array(ids.astype(str)),
                    "ts": pa.array(
                        now_us - 3_600_000_000 + (ids * 997) % 3_600_000_000,
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "price": pa.array(100.0 + rng.random(k)),
                    "quantity": pa.array(0.01 + rng.random(k)),
                    "side": pa.array(np.where(ids % 3 == 0, "sell", "buy")),
                }
            )
        )
    return pa.Table.from_batches(batches)


def wait_quiet(pid, limit=120.0):
    """Until the server's CPU is idle: each ingest's trades are of the last hour, so the
    scheduler builds them and the cache loads them as live bars right after the commit; the
    next run should not be measured against that work."""
    deadline = time.time() + limit
    while time.time() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            return
    raise SystemExit("the server never went quiet")


def main():
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--trades", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, uri = serve(binary, os.path.join(tmp, "data"), cache=True)
        try:
            with flightsql.connect(uri) as conn, conn.cursor() as cur:
                for run in range(args.runs):
                    table = trades(args.trades, args.batch, 1 + run * args.trades)
                    wait_quiet(proc.pid)
                    cpu = cpu_seconds(proc.pid)
                    t = time.perf_counter()
                    cur.adbc_ingest("trades", table, mode="append")
                    wall = time.perf_counter() - t
                    cpu = cpu_seconds(proc.pid) - cpu
                    results.append((wall, cpu))
                    print(f"run {run}: {args.trades / wall:,.0f} trades/s", file=sys.stderr)
                cur.execute("select count(*) from trades")
                (count,) = cur.fetchone()
                assert count == args.trades * args.runs, count
        finally:
            proc.terminate()
            proc.wait()
    results.sort()
    wall, cpu = results[len(results) // 2]
    print(f"{args.trades:,} trades per ingest in batches of {args.batch:,}, "
          f"{args.runs} runs, median: {args.trades / wall:,.0f} trades/s "
          f"({wall:.2f} s), server CPU {cpu / args.trades * 1e6:.2f} s per million trades; "
          f"all runs: {', '.join(f'{args.trades / w:,.0f}' for w, _ in results)} trades/s")


if __name__ == "__main__":
    sys.exit(main())
