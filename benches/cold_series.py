"""The latest 500 bars of a series the cache does not hold, in a table of 90 days of 1m bars
for 200 series (20 symbols x 10 exchanges).

Generates 90 days of trades ending now (`--rate` trades/s over the feed, default 6: about 47 M
trades, most series-minutes with a trade), loads them in 10-day files, builds, and serves the
data dir twice:
- cache off (`OHLCV_CACHE__ENABLED=false`): every query reads the table;
- cache on, each query about a series not asked before (so its first read is cold).
For each, p50/p99 through raw `pyarrow.flight` (GetFlightInfo + DoGet, one connection) of
`select * from ohlcv_1m where exchange = .. and symbol = .. order by window_start desc
limit 500`, and the same through `candles(..., last => 500)`.

    cargo build --release
    python3 benches/cold_series.py --binary target/release/ohlcv-server
"""

import argparse
import datetime as dt
import os
import sys
import tempfile
import time

import pyarrow.flight as fl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from candles_adbc import flight_command, run, serve  # noqa: E402

SYMBOLS = 20
EXCHANGES = 10


def once(client, sql):
    """One query (GetFlightInfo + DoGet): its latency in ms and its rows."""
    t = time.perf_counter()
    info = client.get_flight_info(flight_command(sql))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    return (time.perf_counter() - t) * 1e3, table.num_rows


def series_names():
    exchanges = ["binance", "coinbase", "kraken", "bitstamp", "okx", "bybit", "gemini",
                 "bitfinex"] + [f"exchange{i}" for i in range(8, EXCHANGES)]
    symbols = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "DOGE-USD", "ADA-USD", "AVAX-USD",
               "LINK-USD", "DOT-USD", "LTC-USD"] + [f"SYM{i}-USD" for i in range(10, SYMBOLS)]
    return [(e, s) for e in exchanges[:EXCHANGES] for s in symbols[:SYMBOLS]]


def measure(uri, shape):
    client = fl.FlightClient(uri)
    once(client, "select 1")  # connected before timing
    times = []
    for exchange, symbol in series_names():
        ms, rows = once(client, shape(exchange, symbol))
        assert rows >= 450, (exchange, symbol, rows)
        times.append(ms)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--rate", type=float, default=6.0)
    ap.add_argument("--keep", help="data dir to prepare once and reuse in later runs "
                    "(its bars end when it was prepared)")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    table = lambda e, s: (f"select * from ohlcv_1m where exchange = '{e}' and symbol = '{s}' "
                          "order by window_start desc limit 500")
    function = lambda e, s: (f"select * from candles('{e}', '{s}', '1m', "
                             "now() - interval '100 days', now(), last => 500)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.abspath(args.keep) if args.keep else os.path.join(tmp, "data")
        reuse = args.keep and os.path.exists(os.path.join(data, "ready"))
        end = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        t0 = time.time()
        chunk = 10
        for first in range(0, 0 if reuse else args.days, chunk):
            days = min(chunk, args.days - first)
            start = end - dt.timedelta(days=args.days - first)
            trades = os.path.join(tmp, f"trades-{first}.parquet")
            run(binary, data, "generate", "--output", trades, "--trades",
                str(int(days * 86400 * args.rate)), "--symbols", str(SYMBOLS), "--exchanges",
                str(EXCHANGES), "--rate", str(args.rate), "--seed", str(first),
                "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
            run(binary, data, "load", trades)
            os.unlink(trades)
        if not reuse:
            run(binary, data, "build")
            open(os.path.join(data, "ready"), "w").close()
        prepared = time.time() - t0
        results = {}
        for cache in (False, True):
            proc, uri = serve(binary, data, cache=cache)
            try:
                with_table = measure(uri, table)
                # Every series was read once by the table shape: with the cache on, ask the
                # candles() shape after invalidating, so it is cold again.
                if cache:
                    run(binary, data, "admin", "--server", uri.replace("grpc://", "http://"),
                        "cache-invalidate")
                with_function = measure(uri, function)
            finally:
                proc.terminate()
                proc.wait()
            results[cache] = (with_table, with_function)
    print(f"{args.days} days of 1m bars, {SYMBOLS * EXCHANGES} series (trades generated, loaded "
          f"and built in {prepared:.0f} s); one query per series, each cold; pyarrow.flight, "
          "one connection")
    print()
    print("| latest 500 bars of a cold series | p50 | p99 |")
    print("|---|---:|---:|")
    for cache, label in ((False, "cache off"), (True, "cache on, series not cached")):
        (tp50, tp99), (fp50, fp99) = results[cache]
        print(f"| `ohlcv_1m ... order by window_start desc limit 500`, {label} | "
              f"{tp50:.2f} ms | {tp99:.2f} ms |")
        print(f"| `candles(..., last => 500)`, {label} | {fp50:.2f} ms | {fp99:.2f} ms |")


if __name__ == "__main__":
    sys.exit(main())
