"""Hot candle throughput with one, two and three servers on one lake, and the replica lag
(issue 15).

One lake: a PostgreSQL catalog (a fresh catalog name in the given database) and a warehouse
directory every server shares. 12 hours of recent trades are loaded and built into it; then
three `serve` processes start on it: the first takes the writer lock (the builder), the others
run as read replicas. Measured in one run:
- throughput of `candles(...)` over 500 1m bars from `candles-load` (the lean Rust Flight SQL
  client), 32 connections spread evenly over the first 1, 2 and 3 servers, with the servers'
  CPU per query (read from /proc), so the scaling on machines with more cores can be estimated:
  this machine has 2, shared by the servers and the load generator;
- the replica lag: a trade is ingested into the builder through ADBC, then every replica is
  polled until its live candle shows it; the time from the builder's acknowledgement to the
  replica's answer, over `--trades` trades (the replicas poll the catalog every
  `[cache] trades_poll_ms`, 1 s by default, and on this PostgreSQL catalog also look at once
  when the builder announces a commit with NOTIFY).

usage:
  cargo build --release
  python3 benches/replicas.py --binary target/release/ohlcv-server \
      --pg postgres://ohlcv:ohlcv@127.0.0.1:5432/ohlcv_test
"""

import argparse
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa

sys.path.insert(0, os.path.dirname(__file__))
from candles_adbc import build_recent, cpu_seconds, serve  # noqa: E402


def candles_sql(exchange, symbol, minutes=500):
    return (f"select * from candles('{exchange}', '{symbol}', '1m', "
            f"now() - interval '{minutes} minutes', now())")


def spread_load(load_binary, servers, sql, clients, seconds):
    """`clients` connections spread over `servers` (one candles-load each, run at once);
    total queries/s and the servers' CPU seconds per query."""
    before = [cpu_seconds(p.pid) for p, _ in servers]
    share = [clients // len(servers) + (1 if i < clients % len(servers) else 0)
             for i in range(len(servers))]
    procs = [subprocess.Popen(
        [load_binary, "--uri", uri.replace("grpc://", "http://"), "--sql", sql,
         "--clients", str(n), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, text=True) for (_, uri), n in zip(servers, share)]
    results = [json.loads(p.communicate()[0]) for p in procs]
    queries = sum(r["queries"] for r in results)
    cpu = sum(cpu_seconds(p.pid) - b for (p, _), b in zip(servers, before))
    return queries / seconds, cpu / max(queries, 1), [r["queries"] / seconds for r in results]


def replica_lag(builder_uri, replica_uris, n):
    """Seconds from an acknowledged ingest on the builder to each replica's candles showing
    it: one list per replica. The replicas are polled in turn every few ms, and the ingests
    are spaced by a random pause, so they land at every phase of the replicas' poll."""
    rng = random.Random(7)
    lags = [[] for _ in replica_uris]
    conns = [flightsql.connect(u) for u in replica_uris]
    with flightsql.connect(builder_uri) as writer:
        for i in range(n):
            now = dt.datetime.now(dt.timezone.utc)
            # A series of its own per trade: its live candle exists once the trade is seen.
            symbol = f"LAG-{uuid.uuid4().hex[:8]}"
            trade = pa.table({
                "exchange": ["lagx"], "symbol": [symbol], "trade_id": [str(i)],
                "ts": pa.array([now], pa.timestamp("us", "UTC")),
                "price": [100.0], "quantity": [1.0], "side": ["buy"],
            })
            with writer.cursor() as cur:
                cur.adbc_ingest("trades", trade, mode="append")
            writer.commit()
            acked = time.perf_counter()
            sql = candles_sql("lagx", symbol, 5)
            waiting = set(range(len(conns)))
            while waiting:
                for r in sorted(waiting):
                    with conns[r].cursor() as cur:
                        cur.execute(sql)
                        seen = cur.fetch_arrow_table().num_rows > 0
                    if seen:
                        lags[r].append(time.perf_counter() - acked)
                        waiting.discard(r)
                if time.perf_counter() - acked > 30:
                    raise RuntimeError(f"replicas {sorted(waiting)} did not see trade {i} in 30 s")
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 1.5))
    for c in conns:
        c.close()
    return lags


def main():
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--pg", required=True, help="PostgreSQL URL for the shared catalog")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--trades", type=int, default=40, help="ingests timed for the replica lag")
    args = ap.parse_args()
    load_binary = os.path.join(os.path.dirname(args.binary), "candles-load")

    with tempfile.TemporaryDirectory() as tmp:
        # Every process (the offline load and build, the three servers) on one lake.
        os.environ.update({
            "OHLCV_CATALOG__URL": args.pg,
            "OHLCV_CATALOG__NAME": f"bench_{uuid.uuid4().hex[:12]}",
            "OHLCV_CATALOG__WAREHOUSE": os.path.join(tmp, "warehouse"),
            "OHLCV_TELEMETRY__LISTEN": "",
        })
        data = build_recent(args.binary, tmp)
        servers = []
        try:
            for i in range(3):
                # The first server started takes the writer lock; wait for it before the next.
                servers.append(serve(args.binary, os.path.join(tmp, f"server{i}"), True))
                if i == 0:
                    time.sleep(1.0)
            del data
            with flightsql.connect(servers[0][1]) as conn, conn.cursor() as cur:
                cur.execute("select address, role from system.cluster order by role")
                roles = cur.fetch_arrow_table().to_pylist()
            print("cluster:", roles, flush=True)
            with flightsql.connect(servers[0][1]) as conn, conn.cursor() as cur:
                cur.execute("select exchange, symbol from ohlcv_1m group by exchange, symbol "
                            "order by exchange, symbol limit 1")
                exchange, symbol = cur.fetchone()
            sql = candles_sql(exchange, symbol)

            rows = []
            for k in (1, 2, 3):
                spread_load(load_binary, servers[:k], sql, args.clients, 2)  # warm every server
                qps, cpu, per = spread_load(load_binary, servers[:k], sql, args.clients, args.seconds)
                rows.append((k, qps, cpu, per))
                print(f"{k} server(s): {qps:,.0f} q/s, server CPU {cpu * 1e6:.0f} us/query, "
                      f"per server {[round(x) for x in per]}", flush=True)

            lags = replica_lag(servers[0][1], [u for _, u in servers[1:]], args.trades)
            print()
            print("| servers | candles q/s, 32 clients | server CPU per query | per server |")
            print("|---:|---:|---:|---|")
            for k, qps, cpu, per in rows:
                print(f"| {k} | {qps:,.0f} | {cpu * 1e6:.0f} us | {', '.join(f'{x:,.0f}' for x in per)} |")
            print()
            print("| replica | lag p50 | p90 | max | trades |")
            print("|---|---:|---:|---:|---:|")
            for r, lag in enumerate(lags, start=1):
                lag = sorted(lag)
                print(f"| {r} | {statistics.median(lag) * 1e3:.0f} ms | "
                      f"{lag[int(len(lag) * 0.9)] * 1e3:.0f} ms | {lag[-1] * 1e3:.0f} ms | {len(lag)} |")
        finally:
            for p, _ in servers:
                p.terminate()
            for p, _ in servers:
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
