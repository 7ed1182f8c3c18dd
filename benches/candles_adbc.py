"""End-to-end latency and throughput of the hot candle path through the Python ADBC client.

Builds a deployment of recent synthetic trades with the release binary (generate, load,
build), then serves it twice, the cache on and off, and measures from the client:
- p50/p99 of `candles(exchange, symbol, '1m', ...)` over 500 one-minute bars of one symbol,
  with the CPU time the server and the client process each spent per query;
- the same with the cache disabled (`OHLCV_CACHE__ENABLED=false`: table reads);
- queries/s sustained by 32 concurrent clients (processes, one connection each);
- the same query through `candles-load` (benches/candles_load.rs), a lean Rust Flight SQL
  client: one connection for latency, 32 for throughput. It shows what the server sustains
  when the client does not take most of the 2 cores.

    cargo build --release && python3 benches/candles_adbc.py --binary target/release/ohlcv-server
"""

import json

import argparse
import datetime as dt
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings

import adbc_driver_flightsql.dbapi as flightsql


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary, data_dir, *args):
    subprocess.run(
        [binary, "--data-dir", data_dir, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def serve(binary, data_dir, cache):
    port = free_port()
    env = dict(os.environ, OHLCV_CACHE__ENABLED="true" if cache else "false", RUST_LOG="warn")
    proc = subprocess.Popen(
        [binary, "--data-dir", data_dir, "serve", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"grpc://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            with flightsql.connect(uri) as conn, conn.cursor() as cur:
                cur.execute("select 1")
                cur.fetchall()
            return proc, uri
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.2)


def query_for(uri):
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(
            "select exchange, symbol, max(window_start) as last from ohlcv_1m "
            "group by exchange, symbol order by exchange, symbol limit 1"
        )
        exchange, symbol, last = cur.fetchone()
    end = last + dt.timedelta(minutes=1)
    start = end - dt.timedelta(minutes=500)
    iso = lambda t: t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"select * from candles('{exchange}', '{symbol}', '1m', '{iso(start)}', '{iso(end)}')"
    )


def cpu_seconds(pid):
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(uri, sql, n, warmup, min_rows=495, server=None):
    """p50, p99, rows, and the CPU seconds per timed query of the server (if its process is
    given) and of this client process (Python and the driver's Go runtime together)."""
    out = []
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        for i in range(warmup + n):
            if i == warmup:
                server_cpu = cpu_seconds(server.pid) if server else 0.0
                client_cpu = time.process_time()
            t = time.perf_counter()
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            if i >= warmup:
                out.append(time.perf_counter() - t)
        client_cpu = (time.process_time() - client_cpu) / n
        server_cpu = (cpu_seconds(server.pid) - server_cpu) / n if server else 0.0
    assert table.num_rows >= min_rows, table.num_rows
    out.sort()
    return {
        "p50": out[len(out) // 2],
        "p99": out[int(len(out) * 0.99)],
        "rows": table.num_rows,
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
    }


def lean(load_binary, uri, sql, clients, seconds, server):
    """The query through candles-load; adds the server's CPU seconds per query."""
    before = cpu_seconds(server.pid)
    out = subprocess.run(
        [load_binary, "--uri", uri.replace("grpc://", "http://"), "--sql", sql,
         "--clients", str(clients), "--seconds", str(seconds)],
        check=True, capture_output=True, text=True,
    )
    result = json.loads(out.stdout)
    result["server_cpu"] = (cpu_seconds(server.pid) - before) / max(result["queries"], 1)
    return result


def flight_command(sql):
    """A Flight SQL CommandStatementQuery descriptor, encoded by hand (no driver involved)."""
    import pyarrow.flight as fl

    def varint(n):
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    def field(tag, data):
        return bytes([tag]) + varint(len(data)) + data

    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return fl.FlightDescriptor.for_command(field(0x0A, url) + field(0x12, field(0x0A, sql.encode())))


def build_recent(binary, tmp):
    """A data dir of 12 hours of recent trades (10 symbols x 2 exchanges), loaded and built."""
    data = os.path.join(tmp, "data")
    trades = os.path.join(tmp, "trades.parquet")
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=12)
    run(binary, data, "generate", "--output", trades, "--trades", "216000", "--symbols", "10",
        "--exchanges", "2", "--rate", "5", "--start", start.strftime("%Y-%m-%dT%H:%M:%SZ"))
    run(binary, data, "load", trades)
    run(binary, data, "build")
    return data


def flight_latency(uri, sql, n, warmup):
    """`sql` through raw `pyarrow.flight` (GetFlightInfo + DoGet), no ADBC driver: p50 of each."""
    import pyarrow.flight as fl

    descriptor = flight_command(sql)
    client = fl.FlightClient(uri)
    info_t, get_t = [], []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        info = client.get_flight_info(descriptor)
        t1 = time.perf_counter()
        client.do_get(info.endpoints[0].ticket).read_all()
        t2 = time.perf_counter()
        if i >= warmup:
            info_t.append(t1 - t0)
            get_t.append(t2 - t1)
    info_t.sort()
    get_t.sort()
    return info_t[len(info_t) // 2], get_t[len(get_t) // 2]


def worker(uri, sql, seconds, ready, counts):
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    with flightsql.connect(uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        cur.fetch_arrow_table()
        ready.wait()  # every client connected and warm: start together
        n = 0
        stop = time.time() + seconds
        while time.time() < stop:
            cur.execute(sql)
            cur.fetch_arrow_table()
            n += 1
    counts.put(n)


def throughput(uri, sql, clients, seconds):
    # Spawned, not forked: the ADBC driver's Go runtime does not survive a fork.
    ctx = mp.get_context("spawn")
    counts = ctx.Queue()
    ready = ctx.Barrier(clients)
    procs = [
        ctx.Process(target=worker, args=(uri, sql, seconds, ready, counts))
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(counts.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main():
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ohlcv-server")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    load_binary = os.path.join(os.path.dirname(binary), "candles-load")

    with tempfile.TemporaryDirectory() as tmp:
        data = build_recent(binary, tmp)
        proc, uri = serve(binary, data, cache=True)
        try:
            sql = query_for(uri)
            on = latencies(uri, sql, args.queries, warmup=50, server=proc)
            print(f"cache on: {on}", file=sys.stderr)
            # Where the time goes: a trivial statement through ADBC and through raw Flight.
            one = latencies(uri, "select 1", args.queries // 4, warmup=20, min_rows=1,
                            server=proc)
            info1, get1 = flight_latency(uri, "select 1", args.queries // 4, warmup=20)
            infoc, getc = flight_latency(uri, sql, args.queries // 4, warmup=20)
            lean1 = lean(load_binary, uri, sql, 1, args.seconds, proc)
            lean32 = lean(load_binary, uri, sql, args.clients, args.seconds, proc)
            print(f"lean: {lean1} {lean32}", file=sys.stderr)
            qps = throughput(uri, sql, args.clients, args.seconds)
            print(f"{args.clients} ADBC clients: {qps:.0f} queries/s", file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait()
        proc, uri = serve(binary, data, cache=False)
        try:
            off = latencies(uri, sql, max(args.queries // 10, 50), warmup=5, server=proc)
            lean_off = lean(load_binary, uri, sql, 1, args.seconds / 2, proc)
        finally:
            proc.terminate()
            proc.wait()

    ms = lambda s: f"{s * 1e3:.2f} ms"
    us = lambda s: f"{s * 1e6:.0f} us"
    print(f"query: {sql}")
    print(f"rows: {on['rows']}")
    print()
    print("| Python ADBC client (adbc-driver-flightsql) | cache on | cache off | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| p50 | {ms(on['p50'])} | {ms(off['p50'])} | {off['p50'] / on['p50']:.1f}x |")
    print(f"| p99 | {ms(on['p99'])} | {ms(off['p99'])} | {off['p99'] / on['p99']:.1f}x |")
    print(f"| server CPU per query | {us(on['server_cpu'])} | {us(off['server_cpu'])} | |")
    print(f"| client CPU per query | {us(on['client_cpu'])} | {us(off['client_cpu'])} | |")
    print(f"| {args.clients} clients (processes) | {qps:.0f} queries/s | | |")
    print()
    print("| lean Rust client (candles-load) | cache on | cache off | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| p50, 1 client | {lean1['p50_ms']:.2f} ms | {lean_off['p50_ms']:.2f} ms "
          f"| {lean_off['p50_ms'] / lean1['p50_ms']:.1f}x |")
    print(f"| p99, 1 client | {lean1['p99_ms']:.2f} ms | {lean_off['p99_ms']:.2f} ms "
          f"| {lean_off['p99_ms'] / lean1['p99_ms']:.1f}x |")
    print(f"| server CPU per query | {us(lean1['server_cpu'])} | {us(lean_off['server_cpu'])} | |")
    print(f"| {args.clients} clients (one thread) | {lean32['qps']:.0f} queries/s "
          f"(server CPU {us(lean32['server_cpu'])} per query) | | |")
    print()
    print("| query (cache on), p50 | ADBC end to end | pyarrow.flight GetFlightInfo | DoGet |")
    print("|---|---:|---:|---:|")
    print(f"| `select 1` | {ms(one['p50'])} | {ms(info1)} | {ms(get1)} |")
    print(f"| the candle query | {ms(on['p50'])} | {ms(infoc)} | {ms(getc)} |")


if __name__ == "__main__":
    sys.exit(main())
