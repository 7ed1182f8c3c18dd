//! Shared helpers for integration tests: a temp deployment and bar rows.
#![allow(dead_code)]

pub mod lake;
pub mod proxy;
pub mod seaweed;
pub mod server;
pub mod trades;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::catalog::MemoryCatalogProvider;
use datafusion::prelude::SessionContext;
use ohlcv_server::config::Config;
use ohlcv_server::storage::{MarketSchema, Storage, TableKind, TableWriter, WriterLock};
use ohlcv_server::timeframe::Timeframe;

pub const DAY: i64 = 86_400_000_000;
pub const MIN: i64 = 60_000_000;
/// 2024-01-01T00:00:00Z
pub const T0: i64 = 1_704_067_200_000_000;

pub struct Deployment {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub writer: TableWriter,
}

/// A TCP port of 127.0.0.1 free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `TEST_POSTGRES_URL`, or `None` outside CI when it is not set (`.ci/run` sets it).
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("CI must provide TEST_POSTGRES_URL (see .ci/run)")
        }
        Err(_) => None,
    }
}

impl Deployment {
    pub async fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let writer = writer_for(&config).await;
        Deployment {
            dir,
            config,
            writer,
        }
    }

    pub fn storage(&self) -> &Storage {
        self.writer.storage()
    }

    pub async fn snapshot(&self, kind: TableKind) -> Option<i64> {
        self.storage()
            .table(kind)
            .await
            .unwrap()
            .metadata()
            .current_snapshot_id
    }

    /// A DataFusion session with `ohlcv.market.*` registered.
    pub fn session(&self) -> SessionContext {
        let ctx = SessionContext::new();
        let catalog = MemoryCatalogProvider::new();
        datafusion::catalog::CatalogProvider::register_schema(
            &catalog,
            "market",
            Arc::new(MarketSchema::new(self.storage().clone())),
        )
        .unwrap();
        ctx.register_catalog("ohlcv", Arc::new(catalog));
        ctx
    }

    /// Runs `sql` through DataFusion over our tables.
    pub async fn sql(&self, sql: &str) -> Vec<RecordBatch> {
        self.session()
            .sql(sql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    }

    /// Runs the build of every timeframe at `now` (default settings), in order.
    pub async fn build_all(&self, now: i64) -> Vec<ohlcv_server::build::BuildReport> {
        let mut reports = Vec::new();
        for tf in Timeframe::ALL {
            reports.push(
                ohlcv_server::build::build(&self.writer, tf, now, Default::default())
                    .await
                    .unwrap(),
            );
        }
        reports
    }

    /// Asserts that the bars of `timeframes` equal the reference computed from `trades`
    /// (revisions aside).
    pub async fn assert_bars_equal_trades(
        &self,
        trades: &[trades::Trade],
        timeframes: &[Timeframe],
        stage: &str,
    ) {
        for &tf in timeframes {
            let (_, batches) = ohlcv_server::storage::read::read_range(
                self.storage(),
                TableKind::Bars(tf),
                ohlcv_server::storage::TimeRange::ALL,
            )
            .await
            .unwrap();
            let got: std::collections::BTreeMap<_, _> = trades::table_bars(&batches)
                .into_iter()
                .map(|(k, mut b)| {
                    b.revision = 0;
                    (k, b)
                })
                .collect();
            trades::assert_bars_match(
                &format!("{stage}: {tf}"),
                &got,
                &trades::reference(trades, tf.micros()),
            );
        }
    }

    /// Every bar of a table as comparable tuples, sorted by key.
    pub async fn bars(&self, tf: Timeframe) -> Vec<Bar> {
        self.bars_where(tf, "true").await
    }

    pub async fn bars_where(&self, tf: Timeframe, predicate: &str) -> Vec<Bar> {
        let sql = format!(
            "select exchange, symbol, window_start, close, volume from ohlcv.market.{} \
             where {predicate} order by exchange, symbol, window_start",
            tf.table_name()
        );
        rows_of(&self.sql(&sql).await)
    }
}

pub async fn writer_for(config: &Config) -> TableWriter {
    let lock = WriterLock::acquire_for(config, "test").await.unwrap();
    let storage = Storage::open(config).await.unwrap();
    TableWriter::new(storage, lock)
}

/// (exchange, symbol, window_start, close, volume)
pub type Bar = (String, String, i64, f64, f64);

pub fn rows_of(batches: &[RecordBatch]) -> Vec<Bar> {
    let mut out = Vec::new();
    for b in batches {
        let s = |i: usize| b.column(i).as_any().downcast_ref::<StringArray>().unwrap();
        let ts = b
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let f = |i: usize| b.column(i).as_any().downcast_ref::<Float64Array>().unwrap();
        for r in 0..b.num_rows() {
            out.push((
                s(0).value(r).to_string(),
                s(1).value(r).to_string(),
                ts.value(r),
                f(3).value(r),
                f(4).value(r),
            ));
        }
    }
    out
}

/// Bar rows of the table schema for `bars` (any order); the other measures derive from close.
pub fn bar_batch(tf: Timeframe, bars: &[Bar]) -> RecordBatch {
    let schema = TableKind::Bars(tf).arrow_schema().unwrap();
    let ts = |v: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let f = |g: fn(&Bar) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(bars.iter().map(g)))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            bars.iter().map(|b| b.0.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            bars.iter().map(|b| b.1.as_str()),
        )),
        ts(bars.iter().map(|b| b.2).collect()),
        ts(bars.iter().map(|b| b.2 + tf.micros()).collect()),
        f(|b| b.3),
        f(|b| b.3 + 1.0),
        f(|b| b.3 - 1.0),
        f(|b| b.3),
        f(|b| b.4),
        f(|b| b.3 * b.4),
        f(|b| b.3),
        Arc::new(Int64Array::from_iter_values(bars.iter().map(|_| 1))),
        f(|b| b.4 / 2.0),
        ts(bars.iter().map(|b| b.2).collect()),
        ts(bars.iter().map(|b| b.2).collect()),
        Arc::new(Int32Array::from_iter_values(bars.iter().map(|_| 0))),
        ts(bars.iter().map(|_| T0).collect()),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

pub fn bar(exchange: &str, symbol: &str, window_start: i64, close: f64) -> Bar {
    (
        exchange.to_string(),
        symbol.to_string(),
        window_start,
        close,
        1.5,
    )
}

pub fn sorted(mut bars: Vec<Bar>) -> Vec<Bar> {
    bars.sort_by(|a, b| (&a.0, &a.1, a.2).cmp(&(&b.0, &b.1, b.2)));
    bars
}

/// Applies an upsert to an in-memory model of a table.
pub fn upsert_model(model: &mut Vec<Bar>, rows: &[Bar]) {
    for row in rows {
        model.retain(|b| (&b.0, &b.1, b.2) != (&row.0, &row.1, row.2));
        model.push(row.clone());
    }
    *model = sorted(std::mem::take(model));
}
