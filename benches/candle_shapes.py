"""Every candle query shape users send, against PostgreSQL serving the same bars.

Builds a deployment of recent synthetic trades with the release binary (12 hours, 10 symbols x
2 exchanges: 14,400 1m bars), serves it, copies `ohlcv_1m` into a PostgreSQL table with the
primary key `(exchange, symbol, window_start)`, and then, in one run, for each shape:
- ours through `candles-load` (benches/candles_load.rs, the lean Rust Flight SQL client:
  GetFlightInfo + DoGet per query, one client thread), 1 and 32 connections, with the server's
  CPU time per query;
- PostgreSQL through `pgbench -M prepared` (the distribution's package), 1 and 32 clients,
  the same rows with PostgreSQL's own best formulation of the shape;
- ours through Python ADBC (`adbc-driver-flightsql`): p50, and `select 1` for the floor,
  measured after the throughput runs, all statements interleaved in rounds.

    cargo build --release
    python3 benches/candle_shapes.py --binary target/release/ohlcv-server \
        --pg postgres://ohlcv:ohlcv@127.0.0.1:5432/ohlcv_test

PostgreSQL must be running and the URL's user able to create a table.
"""

import argparse
import datetime as dt
import io
import os
import re
import subprocess
import sys
import tempfile
import warnings

import adbc_driver_flightsql.dbapi as flightsql
import psycopg2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from candles_adbc import build_recent, lean, serve  # noqa: E402

PG_TYPES = {
    "string": "text",
    "large_string": "text",
    "double": "double precision",
    "int64": "bigint",
    "int32": "integer",
    "bool": "boolean",
}


def pg_type(arrow_type):
    text = str(arrow_type)
    if text.startswith("timestamp"):
        return "timestamptz"
    return PG_TYPES[text]


def copy_to_postgres(uri, pg):
    """`ohlcv_1m` as served, into `bench_ohlcv_1m` with the stock table's primary key."""
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute("select * from ohlcv_1m")
        table = cur.fetch_arrow_table()
    columns = ", ".join(f"{f.name} {pg_type(f.type)}" for f in table.schema)
    csv = io.StringIO()
    table.to_pandas().to_csv(csv, index=False, header=False)
    csv.seek(0)
    with psycopg2.connect(pg) as conn, conn.cursor() as cur:
        cur.execute("drop table if exists bench_ohlcv_1m")
        cur.execute(
            f"create table bench_ohlcv_1m ({columns}, "
            "primary key (exchange, symbol, window_start))"
        )
        cur.copy_expert("copy bench_ohlcv_1m from stdin with (format csv)", csv)
        cur.execute("analyze bench_ohlcv_1m")
    return table.num_rows


def pgbench(pg, sql, clients, seconds):
    """PostgreSQL's queries/s for `sql` (prepared), and its mean latency in ms."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql + ";\n")
        script = f.name
    binary = sorted(
        os.path.join("/usr/lib/postgresql", v, "bin", "pgbench")
        for v in os.listdir("/usr/lib/postgresql")
    )[-1]
    out = subprocess.run(
        [binary, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
         "-T", str(int(seconds)), "-f", script, pg],
        check=True, capture_output=True, text=True,
    ).stdout
    os.unlink(script)
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", out).group(1))
    return tps, latency


def adbc_p50s(uri, statements, n, rounds=10, warmup=30):
    """p50 latency of each `(sql, params)` through one ADBC connection, interleaved: `rounds`
    rounds, each running n / rounds queries of every statement in turn, so that whatever the
    machine does meanwhile (PostgreSQL's checkpoints after pgbench, the server's scheduled
    builds) falls on every statement alike, the `select 1` floor included."""
    import time

    times = [[] for _ in statements]
    rows = [0 for _ in statements]
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        for (sql, params) in statements:
            for _ in range(warmup):
                cur.execute(sql, params)
                cur.fetch_arrow_table()
        for _ in range(rounds):
            for i, (sql, params) in enumerate(statements):
                for _ in range(max(1, n // rounds)):
                    t = time.perf_counter()
                    cur.execute(sql, params)
                    table = cur.fetch_arrow_table()
                    times[i].append(time.perf_counter() - t)
                rows[i] = table.num_rows
    return [(sorted(t)[len(t) // 2], r) for t, r in zip(times, rows)]


def main():
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--pg", default="postgres://ohlcv:ohlcv@127.0.0.1:5432/ohlcv_test")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    load_binary = os.path.join(os.path.dirname(binary), "candles-load")

    with tempfile.TemporaryDirectory() as tmp:
        data = build_recent(binary, tmp)
        proc, uri = serve(binary, data, cache=True)
        try:
            bars = copy_to_postgres(uri, args.pg)
            with flightsql.connect(uri) as conn, conn.cursor() as cur:
                cur.execute(
                    "select exchange, symbol, max(window_start) from ohlcv_1m "
                    "group by exchange, symbol order by exchange, symbol limit 1"
                )
                exchange, symbol, last = cur.fetchone()
            end = last + dt.timedelta(minutes=1)
            iso = lambda t: t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            s, e = iso(end - dt.timedelta(minutes=500)), iso(end)
            series = f"exchange = '{exchange}' and symbol = '{symbol}'"
            recent = "window_start >= now() - interval '500 minutes'"
            shapes = [
                (
                    f"`candles(..., '<iso>', '<iso>')`",
                    f"select * from candles('{exchange}', '{symbol}', '1m', '{s}', '{e}')",
                    f"select * from bench_ohlcv_1m where {series} and window_start >= '{s}' "
                    f"and window_start < '{e}' order by window_start",
                    None,
                ),
                (
                    "the same, bound parameters (ADBC)",
                    "select * from candles($1, $2, '1m', $3, $4)",
                    None,
                    (exchange, symbol, s, e),
                ),
                (
                    "`candles(..., now() - interval '500 minutes', now())`",
                    f"select * from candles('{exchange}', '{symbol}', '1m', "
                    "now() - interval '500 minutes', now())",
                    f"select * from bench_ohlcv_1m where {series} and {recent} "
                    "and window_start < now() order by window_start",
                    None,
                ),
                (
                    "`ohlcv_1m where exchange, symbol, window_start >= now() - interval "
                    "... order by window_start`",
                    f"select * from ohlcv_1m where {series} and {recent} order by window_start",
                    f"select * from bench_ohlcv_1m where {series} and {recent} "
                    "order by window_start",
                    None,
                ),
                (
                    "latest 500: `... order by window_start desc limit 500`",
                    f"select * from ohlcv_1m where {series} order by window_start desc limit 500",
                    f"select * from bench_ohlcv_1m where {series} "
                    "order by window_start desc limit 500",
                    None,
                ),
            ]
            rows = []
            for name, ours, theirs, params in shapes:
                row = {"name": name}
                if params is None:
                    row["lean1"] = lean(load_binary, uri, ours, 1, args.seconds, proc)
                    row["lean32"] = lean(load_binary, uri, ours, 32, args.seconds, proc)
                    row["pg1"] = pgbench(args.pg, theirs, 1, args.seconds)
                    row["pg32"] = pgbench(args.pg, theirs, 32, args.seconds)
                print(row, file=sys.stderr)
                rows.append(row)
            statements = [(ours, params) for _, ours, _, params in shapes]
            *measured, (floor, _) = adbc_p50s(uri, statements + [("select 1", None)],
                                              args.queries)
            for row, (p50, n) in zip(rows, measured):
                row["adbc_p50"], row["rows"] = p50, n
                print(row["name"], f"ADBC p50 {p50 * 1e3:.2f} ms, {n} rows", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()

    print(f"{bars} 1m bars; series {exchange}/{symbol}; 500 bars per answer; "
          f"{dt.date.today()}")
    print()
    print("| shape | ours, 1 client | PostgreSQL, 1 client | ours, 32 clients | "
          "PostgreSQL, 32 clients | ratio at 32 | ours p50 (lean) | server CPU per query "
          "| ADBC p50 | ADBC / `select 1` |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        adbc = f"{r['adbc_p50'] * 1e3:.2f} ms"
        ratio_adbc = f"{r['adbc_p50'] / floor:.2f}x"
        if "lean1" in r:
            l1, l32, p1, p32 = r["lean1"], r["lean32"], r["pg1"], r["pg32"]
            print(f"| {r['name']} | {l1['qps']:,.0f} q/s | {p1[0]:,.0f} q/s | "
                  f"{l32['qps']:,.0f} q/s | {p32[0]:,.0f} q/s | {l32['qps'] / p32[0]:.1f}x | "
                  f"{l1['p50_ms']:.2f} ms | {l32['server_cpu'] * 1e6:.0f} us | {adbc} | "
                  f"{ratio_adbc} |")
        else:
            print(f"| {r['name']} | | | | | | | | {adbc} | {ratio_adbc} |")
    print(f"| `select 1` (ADBC floor) | | | | | | | | {floor * 1e3:.2f} ms | 1.00x |")


if __name__ == "__main__":
    sys.exit(main())
