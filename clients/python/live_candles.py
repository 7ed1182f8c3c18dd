"""Live candles pushed by ohlcv-server: subscribe once, then read every change as it happens.

Two ways, the same stream (the candles as they stand, then each change, marked in `change`:
`snapshot`, `live`, `final`, `revised`, `deleted`):

- ADBC (any Flight SQL client): `select * from live_candles(exchange, symbol, timeframe
  [, last => N] [, tz => 'Area/City'] [, since => t])` is a statement whose result stays open;
  `fetch_record_batch()` reads it batch by batch, each batch as it is pushed.
- pyarrow.flight `DoExchange`, whose first message carries the subscription as JSON:
  `{"series": [{"exchange": .., "symbol": ..}, ...], "timeframe": "1m", "last": N}` (several
  series on one stream).

usage: live_candles.py URI EXCHANGE SYMBOL TIMEFRAME [--via adbc|flight] [--updates N]
                       [--user USER --password PASSWORD]

Prints `subscribed` once the first message is in (the candles as they stand; when the series
has none yet, the first change), then one line per pushed candle, and stops after N changes
(default: never). To resume after a disconnect, subscribe again with `since`
set to the window of the last candle received.
"""

import argparse
import json
import sys


def lines(batch):
    """One printable line per pushed candle."""
    rows = batch.to_pydict()
    for i in range(batch.num_rows):
        yield (f"{rows['change'][i]} {rows['symbol'][i]} {rows['window_start'][i].isoformat()} "
               f"close={rows['close'][i]} volume={rows['volume'][i]} "
               f"trades={rows['trade_count'][i]} final={rows['is_final'][i]}")


def follow(batches, updates):
    """Prints the first message, then changes until `updates` of them have been read."""
    seen = 0
    first = True
    for batch in batches:
        for line in lines(batch):
            print(line, flush=True)
            if not first:
                seen += 1
        if first:
            print("subscribed", flush=True)
            first = False
        if updates and seen >= updates:
            return


def via_adbc(args):
    import adbc_driver_flightsql.dbapi as flightsql

    kwargs = {"username": args.user, "password": args.password} if args.user else {}
    sql = (f"select * from live_candles('{args.exchange}', '{args.symbol}', "
           f"'{args.timeframe}', last => {args.last})")
    with flightsql.connect(args.uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        cur.execute(sql)
        reader = cur.fetch_record_batch()
        follow(reader, args.updates)


def via_flight(args):
    import pyarrow.flight as fl

    client = fl.FlightClient(args.uri)
    options = fl.FlightCallOptions()
    if args.user:
        # The handshake trades the password for a bearer token.
        options = fl.FlightCallOptions(
            headers=[client.authenticate_basic_token(args.user, args.password)])
    command = {
        "series": [{"exchange": args.exchange, "symbol": s} for s in args.symbol.split(",")],
        "timeframe": args.timeframe,
        "last": args.last,
    }
    descriptor = fl.FlightDescriptor.for_command(json.dumps(command))
    writer, reader = client.do_exchange(descriptor, options)
    # Nothing more is sent: the subscription is the descriptor.
    writer.done_writing()
    try:
        follow((chunk.data for chunk in reader), args.updates)
    finally:
        # The stream never ends by itself: cancel it, or closing the client waits for it.
        reader.cancel()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("uri")
    ap.add_argument("exchange")
    ap.add_argument("symbol", help="one symbol, or several comma-separated")
    ap.add_argument("timeframe")
    ap.add_argument("--via", choices=["adbc", "flight"], default="adbc")
    ap.add_argument("--last", type=int, default=5, help="candles in the first message")
    ap.add_argument("--updates", type=int, default=0, help="stop after this many changes")
    ap.add_argument("--user")
    ap.add_argument("--password")
    args = ap.parse_args()
    (via_adbc if args.via == "adbc" else via_flight)(args)


if __name__ == "__main__":
    sys.exit(main())
