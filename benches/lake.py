"""A lake kept running for step-by-step timing of first attaches (what `attach.py` measures,
without filling the lake again for every change).

`attach.py` starts, fills and stops its own SeaweedFS on every invocation (about 4 minutes for
50 M trades). This keeps one lake in a directory across invocations and times single builds
against it, so two binaries can be interleaved by hand in a few minutes:

  python3 benches/lake.py serve 5 &            # fills 5 days (50 M trades) once, then serves
  python3 benches/lake.py build BIN_A a         # one first attach into a fresh namespace
  python3 benches/lake.py build BIN_B b         # ... interleave as many rounds as wanted
  python3 benches/lake.py floor                 # pyarrow's read of the same files
  python3 benches/lake.py build BIN a /usr/bin/time -v   # under a wrapper (perf, time)

`build` prints the wall time, the peak RSS, the trades the 1d table holds (checked against
the lake) and the CPU SeaweedFS spent meanwhile. The environment passes through
(`RUST_LOG=ohlcv_server=debug` with `SHOWERR=100000` prints the debug log's tail; `MEM=2048`
sets `[build] memory_mb`; `MIMALLOC_PURGE_DELAY` the allocator's purge delay; `LAKE_DIR` and
`PER_DAY` the lake's directory and trades a day, for `serve`).
"""

import json
import os
import sys
import tempfile
import time

import pyarrow.compute as pc

import attach as A

ROOT = os.environ.get("LAKE_DIR", "/var/tmp/ohlcv-lake")
A.PER_DAY = int(os.environ.get("PER_DAY", A.PER_DAY))


def weed_cpu_ms(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of stat (11 and 12 after the command name).
    return (int(fields[11]) + int(fields[12])) * 1000 // os.sysconf("SC_CLK_TCK")


def main():
    cmd = sys.argv[1]
    os.makedirs(ROOT, exist_ok=True)
    state = os.path.join(ROOT, "lake.json")
    if cmd == "serve":
        days = int(sys.argv[2])
        weed, s3, rest = A.start_weed(ROOT)
        filled_file = os.path.join(ROOT, "days")
        filled = int(open(filled_file).read()) if os.path.exists(filled_file) else 0
        json.dump({"s3": s3, "rest": rest, "pid": weed.pid, "trades": None}, open(state, "w"))
        cat = A.catalog(s3, rest)
        if filled < days:
            A.fill(cat, days - filled, filled)
            open(filled_file, "w").write(str(days))
        trades = cat.load_table(("gold", "gold_crypto_trades")).scan().count()
        json.dump({"s3": s3, "rest": rest, "pid": weed.pid, "trades": trades}, open(state, "w"))
        print(f"ready: {trades} trades, S3 {s3}, REST {rest}", flush=True)
        weed.wait()
        return
    lake = json.load(open(state))
    if cmd == "floor":
        out, _, _, rss = A.measured([sys.executable, A.__file__, "--floor", lake["s3"],
                                     lake["rest"]])
        print(out.strip(), f"peak {rss:.0f} MB")
    elif cmd == "build":
        exe, prefix, wrap = sys.argv[2], sys.argv[3], sys.argv[4:]
        namespace = f"{prefix}_{int(time.time() * 1000)}"
        data_dir = tempfile.mkdtemp(dir=ROOT)
        config = os.path.join(data_dir, "lake.toml")
        A.lake_config(config, data_dir, lake["s3"], lake["rest"], namespace,
                      int(os.environ.get("MEM", "1024")))
        before = weed_cpu_ms(lake["pid"])
        _, err, took, rss = A.measured(wrap + [exe, "--config", config, "build"],
                                       env=dict(os.environ,
                                                RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        weed = weed_cpu_ms(lake["pid"]) - before
        if os.environ.get("SHOWERR"):
            print(err[-int(os.environ["SHOWERR"]):])
        daily = A.catalog(lake["s3"], lake["rest"]).load_table((namespace, "ohlcv_1d"))
        got = pc.sum(daily.scan().to_arrow()["trade_count"]).as_py()
        assert got == lake["trades"], (got, lake["trades"])
        print(f"{exe}: {took:.2f} s, peak {rss:.0f} MB, SeaweedFS {weed} ms CPU, "
              f"namespace {namespace}", flush=True)
    else:
        sys.exit(f"unknown command {cmd}: serve DAYS | build BINARY PREFIX [WRAP...] | floor")


if __name__ == "__main__":
    main()
