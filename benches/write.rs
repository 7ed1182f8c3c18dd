//! Write benchmark: rows/s of our Iceberg writes against pyiceberg writing the same rows into
//! the same kind of table (same schema, partitioning and catalog type), in one run.
//!
//! cargo bench --bench write   (needs `pip install -r tests/python/requirements.txt`)
//!
//! Measures, on a fresh SQLite catalog and local warehouse:
//! - append: ~1M 1m bars (240 series x 3 days) in one commit;
//! - day upsert: every bar of one day (144k bars, 100 series) changed, upserted by key
//!   (pyiceberg: an overwrite of that day, since its `upsert()` did not finish in 5 minutes);
//! - minute upsert: one new minute for 200 series into a day already holding 288k bars (what an
//!   incremental 1m build does every minute).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use ohlcv_server::config::Config;
use ohlcv_server::storage::{Storage, TableKind, TableWriter, WriterLock};
use ohlcv_server::timeframe::Timeframe;

const MIN: i64 = 60_000_000;
const T0: i64 = 1_704_067_200_000_000;
const BARS: TableKind = TableKind::Bars(Timeframe::M1);

/// 1m bars for `series` symbols over `minutes` starting at `start`, with prices offset by `bump`.
fn bars(series: usize, start: i64, minutes: i64, bump: f64) -> RecordBatch {
    let n = series * minutes as usize;
    let mut exchange = Vec::with_capacity(n);
    let mut symbol = Vec::with_capacity(n);
    let mut ws = Vec::with_capacity(n);
    let mut px = Vec::with_capacity(n);
    for s in 0..series {
        for m in 0..minutes {
            exchange.push(["binance", "coinbase", "kraken"][s % 3]);
            symbol.push(format!("SYM{s:03}-USD"));
            ws.push(start + m * MIN);
            px.push(100.0 + s as f64 + (m % 97) as f64 * 0.01 + bump);
        }
    }
    let ts = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(exchange)),
        Arc::new(StringArray::from(symbol)),
        ts(ws.clone()),
        ts(ws.iter().map(|w| w + MIN).collect()),
        f(px.clone()),
        f(px.iter().map(|p| p + 0.5).collect()),
        f(px.iter().map(|p| p - 0.5).collect()),
        f(px.clone()),
        f(vec![2.0; n]),
        f(px.iter().map(|p| p * 2.0).collect()),
        f(px.clone()),
        Arc::new(Int64Array::from(vec![7; n])),
        f(vec![1.0; n]),
        ts(ws.clone()),
        ts(ws.iter().map(|w| w + MIN - 1).collect()),
        Arc::new(Int32Array::from(vec![0; n])),
        ts(vec![T0; n]),
    ];
    RecordBatch::try_new(BARS.arrow_schema().unwrap(), columns).unwrap()
}

async fn writer(dir: &Path) -> TableWriter {
    let config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    let lock = WriterLock::acquire(dir, "bench").unwrap();
    TableWriter::new(Storage::open(&config).await.unwrap(), lock)
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs = 3;
    let work = tempfile::tempdir().unwrap();
    let append = bars(240, T0, 3 * 1440, 0.0);
    let day_new = bars(100, T0, 1440, 1.0);
    let minute_new = bars(200, T0 + 1440 * MIN - MIN, 1, 2.0);
    let minute_base = bars(200, T0, 1440 - 1, 0.0);

    let (mut t_append, mut t_day, mut t_minute) = (vec![], vec![], vec![]);
    for run in 0..runs {
        let dir = work.path().join(format!("ours-{run}"));
        let w = writer(&dir).await;
        let t = Instant::now();
        w.append(BARS, std::slice::from_ref(&append), HashMap::new())
            .await
            .unwrap();
        t_append.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        w.upsert(BARS, std::slice::from_ref(&day_new), HashMap::new())
            .await
            .unwrap();
        t_day.push(t.elapsed().as_secs_f64());

        let dir = work.path().join(format!("minute-{run}"));
        let w = writer(&dir).await;
        w.append(BARS, std::slice::from_ref(&minute_base), HashMap::new())
            .await
            .unwrap();
        let t = Instant::now();
        w.upsert(BARS, std::slice::from_ref(&minute_new), HashMap::new())
            .await
            .unwrap();
        t_minute.push(t.elapsed().as_secs_f64());
    }
    let ours = [
        ("append", append.num_rows(), median(t_append)),
        ("day upsert", day_new.num_rows(), median(t_day)),
        ("minute upsert", minute_new.num_rows(), median(t_minute)),
    ];

    // Baseline: pyiceberg on the same rows, same table layout.
    for (name, batch) in [
        ("append", &append),
        ("day", &day_new),
        ("minute_base", &minute_base),
        ("minute", &minute_new),
    ] {
        write_parquet(&work.path().join(format!("{name}.parquet")), batch);
    }
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/pyiceberg_write.py"
        ))
        .arg(work.path())
        .arg(runs.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyiceberg baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base: HashMap<String, f64> = serde_json::from_slice(&out.stdout).unwrap();

    println!("| operation | rows | ohlcv-server | rows/s | pyiceberg 0.12 | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, rows, secs) in ours {
        let b = base[name];
        println!(
            "| {name} | {rows} | {:.1} ms | {:.0} | {:.1} ms | {:.1}x |",
            secs * 1e3,
            rows as f64 / secs,
            b * 1e3,
            b / secs
        );
    }
}
