"""Point-in-time reads: the latest 500 bars of one series as of a past moment, beside the same
read of the current snapshot, in a table of 90 days of 1m bars for 200 series (the table of
benches/cold_series.py).

Prepares 90 days of trades ending 15 minutes ago (`--rate` trades/s over the feed), loads and builds them,
notes a moment, then revises: late trades in the last 400 minutes of every series (a few per
series, new ids), loaded and built, so the current snapshot's latest bars differ from the
moment's. The data dir is served twice (cache on, then off); for each series, in turn, one read
of the current snapshot and one `as_of` the moment (interleaved), through raw `pyarrow.flight`
(GetFlightInfo + DoGet, one connection):

    select * from candles(e, s, '1m', now() - interval '100 days', now(), last => 500)
    select * from candles(e, s, '1m', now() - interval '100 days', now(), last => 500,
                          as_of => '<moment>')

With the cache on, every series is read once before timing, so a current read is a hot one;
an `as_of` read is never cached (the cache holds the current snapshot only), so it reads the
table at the moment's snapshot: the cold-series path. Checked while timing: every answer has
500 bars, and the `as_of` answers of the first series equal what the current read gave before
the revision.

    cargo build --release
    python3 benches/as_of.py --binary target/release/ohlcv-server [--keep DIR]
"""

import argparse
import datetime as dt
import json
import os
import random
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from candles_adbc import flight_command, run, serve  # noqa: E402
from cold_series import EXCHANGES, SYMBOLS, series_names  # noqa: E402

LAST = 500
CHECKED = 10


def read(client, sql):
    """One query (GetFlightInfo + DoGet): its latency in ms and its table."""
    t = time.perf_counter()
    info = client.get_flight_info(flight_command(sql))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    return (time.perf_counter() - t) * 1e3, table


def latest(e, s, as_of=None):
    moment = f", as_of => '{as_of}'" if as_of else ""
    return (f"select * from candles('{e}', '{s}', '1m', now() - interval '100 days', now(), "
            f"last => {LAST}{moment})")


def fingerprint(table):
    """What a backtest would compare: the bars' windows and values."""
    cols = ["window_start", "open", "high", "low", "close", "volume"]
    return json.dumps([table.column(c).cast(pa.string()).to_pylist() for c in cols])


def late_trades(path, end, seed):
    """Three trades per series in the last 400 minutes before `end`, ids no generator uses."""
    rng = random.Random(seed)
    rows = {k: [] for k in ("exchange", "symbol", "trade_id", "ts", "price", "quantity",
                            "side")}
    for n, (e, s) in enumerate(series_names()):
        for i in range(3):
            ts = end - dt.timedelta(minutes=rng.uniform(5, 400))
            rows["exchange"].append(e)
            rows["symbol"].append(s)
            rows["trade_id"].append(f"late-{seed}-{n}-{i}")
            rows["ts"].append(ts)
            rows["price"].append(rng.uniform(10, 1000))
            rows["quantity"].append(rng.uniform(0.1, 5))
            rows["side"].append("buy" if i % 2 else "sell")
    schema = pa.schema([
        pa.field("exchange", pa.string(), False), pa.field("symbol", pa.string(), False),
        pa.field("trade_id", pa.string(), False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), False),
        pa.field("price", pa.float64(), False), pa.field("quantity", pa.float64(), False),
        pa.field("side", pa.string(), True),
    ])
    pq.write_table(pa.table(rows, schema=schema), path)


def serve_pair(binary, data, moment, cache):
    proc, uri = serve(binary, data, cache=cache)
    try:
        client = fl.FlightClient(uri)
        read(client, "select 1")
        names = series_names()
        if cache:
            for e, s in names:
                read(client, latest(e, s))
        current, past, answers = [], [], []
        for e, s in names:
            ms, now_table = read(client, latest(e, s))
            current.append(ms)
            ms, then_table = read(client, latest(e, s, moment))
            past.append(ms)
            assert now_table.num_rows == LAST and then_table.num_rows == LAST, (e, s)
            answers.append((fingerprint(now_table), fingerprint(then_table)))
        return current, past, answers
    finally:
        proc.terminate()
        proc.wait()


def p(times, q):
    times = sorted(times)
    return times[min(len(times) - 1, int(len(times) * q))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--keep", help="data dir to prepare once and reuse in later runs")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    # The daily retention job of a served data dir must not expire the moment's snapshot.
    os.environ["OHLCV_RETENTION__HISTORY_DAYS"] = "3650"
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.abspath(args.keep) if args.keep else os.path.join(tmp, "data")
        ready = os.path.join(data, "as_of.json")
        t0 = time.time()
        if not (args.keep and os.path.exists(ready)):
            # Ending past the build's grace, so that no bar is live: the current read before
            # the revision is then exactly what the tables held at the moment.
            end = (dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
                   - dt.timedelta(minutes=15))
            for first in range(0, args.days, 10):
                days = min(10, args.days - first)
                start = end - dt.timedelta(days=args.days - first)
                trades = os.path.join(tmp, f"trades-{first}.parquet")
                run(binary, data, "generate", "--output", trades, "--trades",
                    str(int(days * 86400 * args.rate)), "--symbols", str(SYMBOLS),
                    "--exchanges", str(EXCHANGES), "--rate", str(args.rate), "--seed",
                    str(first), "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
                run(binary, data, "load", trades)
                os.unlink(trades)
            run(binary, data, "build")
            # What the first series read before the revision.
            proc, uri = serve(binary, data, cache=False)
            try:
                client = fl.FlightClient(uri)
                before = [fingerprint(read(client, latest(e, s))[1])
                          for e, s in series_names()[:CHECKED]]
            finally:
                proc.terminate()
                proc.wait()
            time.sleep(1)
            moment = dt.datetime.now(dt.timezone.utc).isoformat()
            time.sleep(1)
            late = os.path.join(tmp, "late.parquet")
            late_trades(late, dt.datetime.now(dt.timezone.utc), seed=1)
            run(binary, data, "load", late)
            run(binary, data, "build")
            with open(ready, "w") as f:
                json.dump({"moment": moment, "before": before}, f)
        with open(ready) as f:
            prepared = json.load(f)
        moment, before = prepared["moment"], prepared["before"]
        setup = time.time() - t0
        results = {}
        for cache in (True, False):
            current, past, answers = serve_pair(binary, data, moment, cache)
            for i, want in enumerate(before):
                assert answers[i][1] == want, f"series {i}: as_of differs from the bars then"
            revised = sum(1 for now, then in answers if now != then)
            results[cache] = (current, past, revised)
    print(f"{args.days} days of 1m bars, {SYMBOLS * EXCHANGES} series (prepared in {setup:.0f} s); "
          f"latest {LAST} bars of each series, current and as_of interleaved; pyarrow.flight, "
          "one connection")
    print()
    print("| read | p50 | p99 |")
    print("|---|---:|---:|")
    for cache, label in ((True, "cache on"), (False, "cache off")):
        current, past, revised = results[cache]
        print(f"| current snapshot, {label} | {p(current, 0.5):.2f} ms | {p(current, 0.99):.2f} ms |")
        print(f"| `as_of` the moment before the revision, {label} | {p(past, 0.5):.2f} ms | "
              f"{p(past, 0.99):.2f} ms |")
        print(f"  ({label}: {revised} of {len(current)} series read differently now than then)")


if __name__ == "__main__":
    sys.exit(main())
