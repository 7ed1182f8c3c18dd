"""The bar kernel against DuckDB 2.x, DataFusion and Polars, in one run (issue 16).

Every engine computes 1m bars with our semantics (docs/ARCHITECTURE.md, "Bars") from the same
trades Parquet file written by `ohlcv-server generate`: duplicates of `(exchange, symbol,
trade_id)` collapse to the copy smallest by `(ts, price, quantity, side = 'buy')`; open and
close are the first and last trade by `(ts, trade_id)` (ids compare as text); the sums, counts
and first/last trade times of the window. On the first (smallest) file each peer runs every
formulation below (but the ones in HEAVY, unless --all-formulations), and on larger files its
fastest one there; it is credited with its fastest. All results must equal ours (keys,
open/high/low/close, counts and trade times exactly, sums to 1e-9 relative) or the bench fails
before printing.

The floor is reading the six columns the kernel needs into Arrow with pyarrow (all cores).
Each engine runs in its own process (its peak RSS is read with wait4), `--runs` times on a warm
page cache; the median is reported. Ours runs once uncounted first (see `ours`).

usage:
  cargo build --release
  python3 benches/kernel_peers.py --binary target/release/ohlcv-server [--trades 10000000,50000000]

The peers are installed, pinned, into target/bench-venv (DuckDB 2.0.1, DataFusion 55,
Polars 2.1); the system's DuckDB 1.4 stays for the tests.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "bench-venv"
PEERS = ["duckdb==2.0.1", "datafusion==55.0.0", "polars==2.1.0", "pyarrow==26.0.1"]
COLUMNS = ["exchange", "symbol", "trade_id", "ts", "price", "quantity", "side"]
EXACT = ["open", "high", "low", "close", "trade_count", "first_trade_ts", "last_trade_ts"]
SUMS = ["volume", "quote_volume", "vwap", "buy_volume"]

# --- engines (run inside the venv, one process per engine and file) -------------------------

def bars_sql(bucket, first, last):
    """The bars of a `deduped` relation (exchange, symbol, trade_id, ts, price, quantity,
    buy), in one engine's dialect: its time bucket and its first/last-by-order aggregates."""
    return f"""
        SELECT exchange, symbol, {bucket} AS window_start,
               {first} AS open, max(price) AS high, min(price) AS low, {last} AS close,
               sum(quantity) AS volume, sum(price * quantity) AS quote_volume,
               sum(price * quantity) / sum(quantity) AS vwap, count(*) AS trade_count,
               sum(CASE WHEN buy THEN quantity ELSE 0 END) AS buy_volume,
               min(ts) AS first_trade_ts, max(ts) AS last_trade_ts
        FROM deduped GROUP BY exchange, symbol, {bucket}"""


DUCK_BARS = bars_sql("time_bucket(INTERVAL 1 MINUTE, ts)",
                     "arg_min(price, (ts, trade_id))", "arg_max(price, (ts, trade_id))")
FUSION_BARS = bars_sql("date_bin(INTERVAL '1 minute', ts)",
                       "first_value(price ORDER BY ts, trade_id)",
                       "last_value(price ORDER BY ts, trade_id)")
ORDER = "ts, price, quantity, side = 'buy'"
COPIES = "exchange, symbol, trade_id, ts, price, quantity, side = 'buy' AS buy"

# Each: how `deduped` is made from the file ({src}); the bars query follows it.
DUCKDB = {
    # Dedupe with a window function: the textbook formulation.
    "qualify": f"""
        WITH deduped AS (
          SELECT {COPIES} FROM {{src}}
          QUALIFY row_number() OVER (PARTITION BY exchange, symbol, trade_id
                                     ORDER BY {ORDER}) = 1)""",
    # Dedupe with a hash aggregate: the smallest copy is min() of a struct in key order.
    "group-by": """
        WITH smallest AS (
          SELECT exchange, symbol, trade_id,
                 min({'ts': ts, 'price': price, 'quantity': quantity, 'buy': side = 'buy'}) AS t
          FROM {src} GROUP BY exchange, symbol, trade_id),
        deduped AS (
          SELECT exchange, symbol, trade_id, t.ts AS ts, t.price AS price,
                 t.quantity AS quantity, t.buy AS buy FROM smallest)""",
    # Dedupe with DISTINCT ON over the same order.
    "distinct-on": f"""
        WITH deduped AS (
          SELECT DISTINCT ON (exchange, symbol, trade_id) {COPIES} FROM {{src}}
          ORDER BY exchange, symbol, trade_id, {ORDER})""",
}

DATAFUSION = {
    "row-number": f"""
        WITH ranked AS (
          SELECT {COPIES}, row_number() OVER (PARTITION BY exchange, symbol, trade_id
                                              ORDER BY {ORDER}) AS rn
          FROM {{src}}),
        deduped AS (SELECT * FROM ranked WHERE rn = 1)""",
    "distinct-on": f"""
        WITH deduped AS (
          SELECT DISTINCT ON (exchange, symbol, trade_id) {COPIES} FROM {{src}}
          ORDER BY exchange, symbol, trade_id, {ORDER})""",
    # (min() of a named_struct, DuckDB's fastest, ran out of 24 GB at 10 M trades.)
    "first-value": f"""
        WITH deduped AS (
          SELECT exchange, symbol, trade_id,
                 first_value(ts ORDER BY {ORDER}) AS ts,
                 first_value(price ORDER BY {ORDER}) AS price,
                 first_value(quantity ORDER BY {ORDER}) AS quantity,
                 first_value(side = 'buy' ORDER BY {ORDER}) AS buy
          FROM {{src}} GROUP BY exchange, symbol, trade_id)""",
}


# Raced only with --all-formulations: at 10 M trades on this machine (2026-11-30) DataFusion's
# DISTINCT ON was killed out of memory (24 GB) and its first_value() dedupe took 76.7 s and
# 21 GB, risking the machine for a result far behind its row_number() formulation.
HEAVY = {("datafusion", "distinct-on"), ("datafusion", "first-value")}


def polars_query(pl, path, how):
    scan = pl.scan_parquet(path).select(COLUMNS).with_columns(buy=pl.col("side") == "buy")
    if how == "sort-unique":
        # One sort by (ts, trade_id, price, quantity, buy): copies share their id, so this is
        # also the dedupe order, and within a window first/last are open/close.
        deduped = scan.sort(["ts", "trade_id", "price", "quantity", "buy"]).unique(
            subset=["exchange", "symbol", "trade_id"], keep="first", maintain_order=True
        )
        first, last = pl.col("price").first(), pl.col("price").last()
    else:
        order = ["ts", "price", "quantity", "buy"]
        deduped = scan.group_by(["exchange", "symbol", "trade_id"]).agg(
            [pl.col(c).sort_by(order).first() for c in order]
        )
        first = pl.col("price").sort_by(["ts", "trade_id"]).first()
        last = pl.col("price").sort_by(["ts", "trade_id"]).last()
    return (
        deduped.group_by(["exchange", "symbol", pl.col("ts").dt.truncate("1m").alias("window_start")])
        .agg(
            open=first,
            high=pl.col("price").max(),
            low=pl.col("price").min(),
            close=last,
            volume=pl.col("quantity").sum(),
            quote_volume=(pl.col("price") * pl.col("quantity")).sum(),
            trade_count=pl.len(),
            buy_volume=pl.when(pl.col("buy")).then(pl.col("quantity")).otherwise(0.0).sum(),
            first_trade_ts=pl.col("ts").min(),
            last_trade_ts=pl.col("ts").max(),
        )
        .with_columns(vwap=pl.col("quote_volume") / pl.col("volume"))
    )


def run_engine(engine, how, path, runs, out):
    """Runs one formulation `runs` times; writes the last result to `out`; prints seconds."""
    import pyarrow.parquet as pq

    if engine == "floor":
        cols = COLUMNS[:6]
        run = lambda: pq.read_table(path, columns=cols)  # noqa: E731
    elif engine == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        sql = DUCKDB[how].replace("{src}", f"read_parquet('{path}')") + DUCK_BARS
        run = lambda: con.execute(sql).to_arrow_table()  # noqa: E731
    elif engine == "datafusion":
        import datafusion

        ctx = datafusion.SessionContext()
        ctx.register_parquet("trades", path)
        sql = DATAFUSION[how].replace("{src}", "trades") + FUSION_BARS
        run = lambda: ctx.sql(sql).to_arrow_table()  # noqa: E731
    elif engine == "polars":
        import polars as pl

        query = polars_query(pl, path, how)
        run = lambda: query.collect().to_arrow()  # noqa: E731
    else:
        raise SystemExit(f"unknown engine {engine}")
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    if engine != "floor":
        pq.write_table(result, out)
    print(json.dumps({"seconds": statistics.median(times), "all": times}))


# --- the driver (system python) ---------------------------------------------------------------


def venv_python():
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEERS], check=True)
    return str(python)


def run_measured(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.WIFSIGNALED(status):
        raise RuntimeError(f"killed by signal {os.WTERMSIG(status)} (9: out of memory), "
                           f"peak {usage.ru_maxrss / 1024:.0f} MB")
    if status != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} failed: {err[-3000:]}")
    return out, usage.ru_maxrss / 1024.0


def ours(binary, path, runs, out):
    times, peak = [], 0.0
    # One run first, not counted: each of ours is a new process, and on this VM the first
    # touch of memory the host has not backed yet costs several times the rest (the peers
    # repeat in one process, so their median skips it the same way).
    run_measured([binary, "compute", "--input", path, "--timeframe", "1m"])
    for _ in range(runs):
        text, rss = run_measured(
            [binary, "compute", "--input", path, "--timeframe", "1m", "--output", out]
        )
        # "N 1m bars from M trades in 1.234s": the kernel's own clock, like the peers'
        # (process start and writing the result file excluded). The file is read and moved
        # into series order in one pass, so there is no separate read time.
        m = re.search(r"trades in ([0-9.]+)s", text)
        times.append(float(m.group(1)))
        peak = max(peak, rss)
    return statistics.median(times), peak


def normalized(path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    cols = {}
    for name in ["exchange", "symbol", "window_start", *EXACT, *SUMS]:
        c = t.column(name)
        if pa.types.is_timestamp(c.type):
            c = pc.cast(c, pa.timestamp("us", "UTC")).cast(pa.int64())
        elif pa.types.is_integer(c.type):
            c = c.cast(pa.int64())
        elif pa.types.is_dictionary(c.type) or pa.types.is_large_string(c.type) or pa.types.is_string_view(c.type):
            c = c.cast(pa.string())
        cols[name] = c
    table = pa.table(cols)
    return table.sort_by([("exchange", "ascending"), ("symbol", "ascending"), ("window_start", "ascending")])


def assert_equal(name, ours_path, theirs_path):
    import numpy as np

    a, b = normalized(ours_path), normalized(theirs_path)
    if a.num_rows != b.num_rows:
        raise AssertionError(f"{name}: {b.num_rows} bars, ours {a.num_rows}")
    for col in ["exchange", "symbol", "window_start", *EXACT]:
        if not a.column(col).equals(b.column(col)):
            x, y = a.column(col).to_pylist(), b.column(col).to_pylist()
            row = next(i for i in range(len(x)) if x[i] != y[i])
            raise AssertionError(f"{name}: {col} differs at bar {row}: ours {x[row]}, theirs {y[row]}")
    for col in SUMS:
        x, y = a.column(col).to_numpy(), b.column(col).to_numpy()
        if not np.allclose(x, y, rtol=1e-9, atol=0.0):
            row = int(np.argmax(np.abs(x - y) / np.abs(x)))
            raise AssertionError(f"{name}: {col} differs at bar {row}: ours {x[row]}, theirs {y[row]}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary")
    parser.add_argument("--trades", default="10000000,50000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--all-formulations", action="store_true",
                        help="also race the formulations known to exhaust memory (HEAVY)")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--how", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        return run_engine(args.engine, args.how, args.file, args.runs, args.out)
    if not args.binary:
        parser.error("--binary is required")

    python = venv_python()
    versions = subprocess.run(
        [python, "-c", "import duckdb, datafusion, polars, pyarrow;"
         "print(duckdb.__version__, datafusion.__version__, polars.__version__, pyarrow.__version__)"],
        check=True, capture_output=True, text=True).stdout.split()
    print(f"DuckDB {versions[0]}, DataFusion {versions[1]}, Polars {versions[2]}, pyarrow {versions[3]}")
    data = ROOT / "target" / "bench-data"
    data.mkdir(parents=True, exist_ok=True)
    rows = []
    # Every formulation runs on the first (smallest) file; on larger files each engine runs
    # only the one that was fastest there.
    chosen = {engine: [h for h in hows if args.all_formulations or (engine, h) not in HEAVY]
              for engine, hows in [("duckdb", list(DUCKDB)), ("datafusion", list(DATAFUSION)),
                                   ("polars", ["sort-unique", "group-by"])]}
    for n in [int(x) for x in args.trades.split(",")]:
        path = str(data / f"peers-{n}.parquet")
        if not os.path.exists(path):
            subprocess.run([args.binary, "generate", "--output", path, "--trades", str(n),
                            "--symbols", "50", "--exchanges", "3", "--rate", "500"], check=True)
        with tempfile.TemporaryDirectory() as tmp:
            mine = os.path.join(tmp, "ours.parquet")
            total, peak = ours(args.binary, path, args.runs, mine)
            floor_out, floor_peak = run_measured(
                [python, __file__, "--engine", "floor", "--file", path, "--runs", str(args.runs)])
            floor = json.loads(floor_out)["seconds"]
            print(f"{n} ours: {total:.3f} s, peak {peak:.0f} MB; "
                  f"floor {floor:.3f} s, peak {floor_peak:.0f} MB", flush=True)
            row = {"trades": n, "ours": total, "ours_peak": peak,
                   "floor": floor, "floor_peak": floor_peak, "peers": {}}
            for engine, hows in chosen.items():
                for how in hows:
                    out = os.path.join(tmp, f"{engine}-{how}.parquet")
                    try:
                        text, rss = run_measured([python, __file__, "--engine", engine, "--how", how,
                                                  "--file", path, "--runs", str(args.runs), "--out", out])
                    except RuntimeError as e:
                        print(f"{n} {engine} {how}: could not run: {str(e)[-300:]}", flush=True)
                        continue
                    seconds = json.loads(text)["seconds"]
                    assert_equal(f"{n} trades, {engine} {how}", mine, out)
                    print(f"{n} {engine} {how}: {seconds:.3f} s, peak {rss:.0f} MB (equal to ours)",
                          flush=True)
                    row["peers"].setdefault(engine, []).append((seconds, how, rss))
            rows.append(row)
            chosen = {e: [min(runs)[1]] for e, runs in row["peers"].items()}

    print()
    print("| trades | ours | ours / floor | floor (pyarrow, 6 columns) | DuckDB | DataFusion | Polars | ours peak | DuckDB peak |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        def best(engine):
            runs = r["peers"].get(engine)
            if not runs:
                return "-", None
            s, how, rss = min(runs)
            return f"{s:.2f} s ({s / r['ours']:.2f}x, {how})", rss
        duck, duck_peak = best("duckdb")
        fusion, _ = best("datafusion")
        polars, _ = best("polars")
        print(f"| {r['trades']:,} | {r['ours']:.2f} s | {r['ours'] / r['floor']:.2f}x | {r['floor']:.2f} s "
              f"| {duck} | {fusion} | {polars} | {r['ours_peak']:.0f} MB | "
              f"{'-' if duck_peak is None else f'{duck_peak:.0f} MB'} |")
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        print(f"\nours {b['trades']:,} / {a['trades']:,} trades: {b['ours'] / a['ours']:.2f}x")


if __name__ == "__main__":
    main()
