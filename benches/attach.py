"""First attach of a lake's trades table: our `build` beside pyarrow reading the same files.

Starts a real SeaweedFS (`weed mini`: S3 and an Iceberg REST catalog), fills
`gold.gold_crypto_trades` through pyiceberg in another team's schema (naive `trade_time`,
`px` decimal(18,8), `qty` double, string ids, `pair`, `venue`, `is_buyer_maker`), partitioned
by identity(venue) and hour(trade_time), 10 M trades a day over 3 venues x 50 pairs, with bursts
of trades at the same microsecond. Then, for each size, interleaved:

- the floor: pyarrow reads the seven columns of every live data file (listed by pyiceberg's
  scan plan) from the same store, all cores, streaming (`dataset.to_batches`; the faster of
  the default read-ahead and a deeper one), in its own process;
- ours: `ohlcv-server --config lake.toml build` (1m and 5m from the trades in chunks, then
  30m, 1h and 1d rolled up), a fresh data dir and a fresh namespace for our tables each run,
  with `[build] memory_mb` as given;
- the idle footprint: `serve` on an empty data dir, its RSS after 5 s.

Peak RSS is the process's own (wait4, from a small wrapper process). Before printing, every run's 1d table is read back with
pyiceberg and its trade count and volume are checked against what was written.

usage:
  cargo build --release
  python3 benches/attach.py --binary target/release/ohlcv-server --days 5,25 [--runs 2]
  # where the time goes: our runs under perf (perf.data of the last run in the work dir)
  python3 benches/attach.py --days 2 --runs 1 --work . --wrap "perf record -F 499 -g -o perf.data"
  # the allocator's purge delay (ms): the server inherits the environment
  MIMALLOC_PURGE_DELAY=250 python3 benches/attach.py --days 2 --runs 2
  # before/after: another build run after ours in every round
  python3 benches/attach.py --days 2 --runs 2 --baseline /tmp/ohlcv-server-before
"""

import argparse
import datetime
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ACCESS, SECRET = "ohlcvbench", "ohlcvbenchsecret"
TABLE_BUCKET, STATE_BUCKET = "lake", "ohlcv-state"
PER_DAY = 10_000_000
VENUES = ["binance", "coinbase", "kraken"]
PAIRS = [f"C{i:02d}-USDT" for i in range(50)]
COLUMNS = ["trade_time", "px", "qty", "id", "pair", "venue", "is_buyer_maker"]


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    pass


def start_weed(root):
    weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    s3, rest = free_port(), free_port()
    cmd = [weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
           "-admin.ui=false", f"-tableBucket={TABLE_BUCKET}", f"-s3.port={s3}",
           f"-s3.port.iceberg={rest}", "-s3.port.lance=0"]
    cmd += [f"-{f}={free_port()}" for f in
            ["master.port", "volume.port", "filer.port", "webdav.port", "admin.port"]]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)
    log = open(os.path.join(root, "weed.log"), "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
    import boto3

    s3_url = f"http://127.0.0.1:{s3}"
    client = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id=ACCESS,
                          aws_secret_access_key=SECRET, region_name="us-east-1")
    deadline = time.time() + 90
    while True:
        try:
            names = [b["Name"] for b in client.list_buckets()["Buckets"]]
            if TABLE_BUCKET in names:
                if STATE_BUCKET not in names:
                    client.create_bucket(Bucket=STATE_BUCKET)
                break
        except Exception:
            pass
        if time.time() > deadline:
            raise RuntimeError("SeaweedFS did not come up")
        time.sleep(0.5)
    return proc, s3_url, f"http://127.0.0.1:{rest}"


def catalog(s3, rest):
    from pyiceberg.catalog import load_catalog

    # SigV4 signs with the environment's keys (a boto3 session).
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET)

    return load_catalog(
        "lake", type="rest", uri=rest, warehouse=f"s3://{TABLE_BUCKET}",
        **{"rest.sigv4-enabled": "true", "rest.signing-region": "us-east-1",
           "rest.signing-name": "s3tables", "s3.endpoint": s3, "s3.access-key-id": ACCESS,
           "s3.secret-access-key": SECRET, "s3.region": "us-east-1"})


def day_of_trades(day_start_us, rng, first_id):
    """PER_DAY trades of one day: a third as many instants, each a burst of 1-6 trades."""
    instants = rng.integers(0, 86_400_000_000, PER_DAY // 3)
    sizes = rng.integers(1, 6, instants.size)
    ts = np.repeat(instants, sizes)[:PER_DAY]
    ts.sort()
    n = ts.size
    stream = rng.integers(0, len(VENUES) * len(PAIRS), n)
    base = 10.0 ** rng.uniform(-2, 5, len(VENUES) * len(PAIRS))
    drift = np.sin(ts / 3.6e9 + stream) * 0.02
    px = np.round(base[stream] * (1 + drift + rng.normal(0, 0.0005, n)), 8)
    ids = pc.cast(pa.array(np.arange(first_id, first_id + n)), pa.string())
    return pa.table({
        "trade_time": pa.array(day_start_us + ts, pa.timestamp("us")),
        "px": pa.array(px).cast(pa.decimal128(18, 8), safe=False),
        "qty": pa.array(np.round(rng.exponential(0.5, n) + 1e-6, 6)),
        "id": ids,
        "pair": pa.array(np.array(PAIRS, dtype=object)[stream % len(PAIRS)], pa.string()),
        "venue": pa.array(np.array(VENUES, dtype=object)[stream // len(PAIRS)], pa.string()),
        "is_buyer_maker": pa.array(rng.integers(0, 2, n).astype(bool)),
    })


def fill(cat, days, first_day):
    """Appends `days` more days (one pyiceberg append each); returns (trades, volume) added."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import HourTransform, IdentityTransform
    from pyiceberg.types import (BooleanType, DecimalType, DoubleType, NestedField,
                                 StringType, TimestampType)

    if ("gold",) not in cat.list_namespaces():
        cat.create_namespace("gold")
    try:
        table = cat.load_table(("gold", "gold_crypto_trades"))
    except Exception:
        schema = Schema(
            NestedField(1, "trade_time", TimestampType(), required=True),
            NestedField(2, "px", DecimalType(18, 8), required=True),
            NestedField(3, "qty", DoubleType(), required=True),
            NestedField(4, "id", StringType(), required=True),
            NestedField(5, "pair", StringType(), required=True),
            NestedField(6, "venue", StringType(), required=True),
            NestedField(7, "is_buyer_maker", BooleanType(), required=True),
        )
        spec = PartitionSpec(
            PartitionField(6, 1000, IdentityTransform(), "venue"),
            PartitionField(1, 1001, HourTransform(), "trade_time_hour"),
        )
        table = cat.create_table(("gold", "gold_crypto_trades"), schema=schema,
                                 partition_spec=spec)
    rng = np.random.default_rng(first_day)
    trades, volume = 0, 0.0
    for d in range(first_day, first_day + days):
        start = int(FIRST_DAY.timestamp() * 1e6) + d * 86_400_000_000
        batch = day_of_trades(start, rng, d * PER_DAY)
        table.append(batch.cast(table.schema().as_arrow()))
        trades += batch.num_rows
        volume += pc.sum(batch["qty"]).as_py()
        print(f"  filled day {d + 1}: {batch.num_rows} trades", flush=True)
    return trades, volume


FIRST_DAY = datetime.datetime.now(datetime.timezone.utc).replace(
    hour=0, minute=0, second=0, microsecond=0) - datetime.timedelta(days=40)


# Linux keeps the larger of the old and new image's peak across exec, so a child forked from
# this (large) process would report at least our own RSS: a small forked wrapper spawns the
# command and reports the command's own peak.
WRAPPER = """import os, sys, time
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\nPEAK_KB {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd, env=None):
    """(stdout, stderr, seconds, peak RSS in MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, cmd)], capture_output=True,
                          env=env, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} failed ({proc.returncode}): "
                           f"{proc.stderr[-3000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_KB ", 1)[1].split()[0])
    return proc.stdout, proc.stderr, took, peak_kb / 1024.0


def floor(s3, rest):
    """Child process: reads the seven columns of every live file; prints rows and seconds."""
    import pyarrow.dataset as pads
    from pyarrow import fs

    table = catalog(s3, rest).load_table(("gold", "gold_crypto_trades"))
    paths = [t.file.file_path.removeprefix("s3://") for t in table.scan().plan_files()]
    s3fs = fs.S3FileSystem(access_key=ACCESS, secret_key=SECRET, endpoint_override=s3,
                           scheme="http", region="us-east-1")
    best = None
    for readahead in (4, 16):
        start = time.perf_counter()
        data = pads.dataset(paths, format="parquet", filesystem=s3fs)
        rows = 0
        for batch in data.to_batches(columns=COLUMNS, use_threads=True,
                                     fragment_readahead=readahead):
            rows += batch.num_rows
        took = time.perf_counter() - start
        best = took if best is None else min(best, took)
    print(json.dumps({"rows": rows, "seconds": best, "files": len(paths)}))


def lake_config(path, data_dir, s3, rest, namespace, memory_mb):
    with open(path, "w") as f:
        f.write(f"""data_dir = "{data_dir}"
[catalog]
namespace = "{namespace}"
warehouse = "s3://{TABLE_BUCKET}"
[catalog.rest]
uri = "{rest}"
warehouse = "s3://{TABLE_BUCKET}"
sigv4 = true
signing_name = "s3tables"
[s3]
endpoint = "{s3}"
region = "us-east-1"
access_key_id = "{ACCESS}"
secret_access_key = "{SECRET}"
lease = "s3://{STATE_BUCKET}/{namespace}/writer.lease"
[source]
namespace = "gold"
table = "gold_crypto_trades"
[source.columns]
ts = "trade_time"
price = "px"
quantity = "qty"
trade_id = "id"
symbol = "pair"
exchange = "venue"
side = "is_buyer_maker"
[build]
memory_mb = {memory_mb}
""")


def check_bars(cat, namespace, trades, volume):
    daily = cat.load_table((namespace, "ohlcv_1d")).scan().to_arrow()
    got_trades = pc.sum(daily["trade_count"]).as_py()
    got_volume = pc.sum(daily["volume"]).as_py()
    assert got_trades == trades, (namespace, got_trades, trades)
    assert abs(got_volume - volume) <= 1e-6 * volume, (namespace, got_volume, volume)


def idle_footprint(binary, work):
    data_dir = tempfile.mkdtemp(dir=work)
    proc = subprocess.Popen([binary, "serve", "--data-dir", data_dir, "--listen",
                             f"127.0.0.1:{free_port()}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(5)
    with open(f"/proc/{proc.pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    proc.terminate()
    proc.wait()
    return rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--days", default="5,25", help="history lengths, 10 M trades a day")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--per-day", type=int, default=10_000_000, help="trades a day")
    ap.add_argument("--memory-mb", type=int, default=1024)
    ap.add_argument("--work", default=None, help="directory for the store (default: a temp dir)")
    ap.add_argument("--wrap", default="", help="command our runs are started under (perf record)")
    ap.add_argument("--baseline", default=None,
                    help="another build of ours, run after ours in every round (before/after)")
    ap.add_argument("--floor", nargs=2, metavar=("S3", "REST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global PER_DAY
    PER_DAY = args.per_day
    if args.floor:
        return floor(*args.floor)
    work = tempfile.mkdtemp(prefix="attach-bench-", dir=args.work)
    binary = os.path.abspath(args.binary)
    baseline = os.path.abspath(args.baseline) if args.baseline else None
    weed, s3, rest = start_weed(work)
    rows = []
    try:
        cat = catalog(s3, rest)
        idle = idle_footprint(binary, work)
        filled, trades, volume = 0, 0, 0.0
        for days in sorted(int(d) for d in args.days.split(",")):
            print(f"filling to {days} days", flush=True)
            t, v = fill(cat, days - filled, filled)
            filled, trades, volume = days, trades + t, volume + v
            ours_runs, floor_runs, base_runs = [], [], []
            for run in range(args.runs):
                out, _, _, rss = measured([sys.executable, __file__, "--floor", s3, rest])
                result = json.loads(out)
                assert result["rows"] == trades, (result, trades)
                floor_runs.append((result["seconds"], rss, result["files"]))
                for which, exe in [("ours", binary), ("baseline", baseline)]:
                    if exe is None:
                        continue
                    namespace = f"candles_d{days}_r{run}_{which}"
                    data_dir = tempfile.mkdtemp(dir=work)
                    config = os.path.join(data_dir, "lake.toml")
                    lake_config(config, data_dir, s3, rest, namespace, args.memory_mb)
                    _, err, took, rss = measured(
                        shlex.split(args.wrap) + [exe, "--config", config, "build"],
                        env=dict(os.environ, RUST_LOG="warn"))
                    check_bars(cat, namespace, trades, volume)
                    (ours_runs if which == "ours" else base_runs).append((took, rss))
                    print(f"  {trades} trades run {run}: floor {floor_runs[-1][0]:.1f} s, "
                          f"{which} {took:.1f} s, peak {rss:.0f} MB", flush=True)
            rows.append((days, trades, floor_runs, ours_runs, base_runs))
    finally:
        weed.terminate()
        weed.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nidle serve footprint: {idle:.0f} MB; [build] memory_mb = {args.memory_mb}")
    print("| days | trades | files | pyarrow read (floor) | ours: first attach | ratio | "
          "ours peak RSS | pyarrow peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for days, trades, floor_runs, ours_runs, base_runs in rows:
        f = statistics.median(r[0] for r in floor_runs)
        o = statistics.median(r[0] for r in ours_runs)
        print(f"| {days} | {trades / 1e6:.0f} M | {floor_runs[0][2]} | {f:.1f} s | {o:.1f} s | "
              f"{o / f:.2f}x | {max(r[1] for r in ours_runs):.0f} MB | "
              f"{max(r[1] for r in floor_runs):.0f} MB |")
        if base_runs:
            b = statistics.median(r[0] for r in base_runs)
            print(f"  baseline build ({args.baseline}): {b:.1f} s, {b / f:.2f}x the floor, "
                  f"peak {max(r[1] for r in base_runs):.0f} MB; ours / baseline {o / b:.2f}")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        growth = max(r[1] for r in last[3]) / max(r[1] for r in first[3])
        print(f"peak RSS growth for {last[1] / first[1]:.0f}x the history: {growth:.2f}x")


if __name__ == "__main__":
    main()
