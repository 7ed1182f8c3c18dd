//! `GET /status` on the telemetry port: one self-contained HTML page (no script, no font, no
//! request to anywhere else) for people who would rather look than read: the jobs with their
//! schedules, last runs, success rates and each timeframe's lag; recent failures with their
//! errors; the last validation results; the servers on the lake; and a candlestick chart of any series and timeframe,
//! drawn as SVG on the server, live bars marked. Read-only; when users are configured it asks
//! for one (HTTP Basic, any role), with the handshake's back-off.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Auth;
use crate::candles::cache::BarCache;
use crate::candles::{Fill, Request, Windows};
use crate::clock::Clock;
use crate::jobs::{History, SchedulerHandle};
use crate::quality::Reports;
use crate::storage::Storage;

/// What the HTTP endpoint reads when scraped or probed (`telemetry`), and the page too.
#[derive(Clone)]
pub struct Probe {
    pub storage: Storage,
    pub cache: BarCache,
    pub clock: Arc<dyn Clock>,
    /// Cleared when the scheduler task ends before shutdown.
    pub scheduler_alive: Arc<std::sync::atomic::AtomicBool>,
}

/// What the page reads besides the telemetry probe.
#[derive(Clone)]
pub struct Pages {
    pub probe: Probe,
    pub auth: Arc<Auth>,
    pub scheduler: SchedulerHandle,
    pub history: History,
    pub reports: Reports,
    pub members: super::cluster::Members,
}

/// Chart parameters: `?exchange=&symbol=&timeframe=1m&bars=120`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ChartQuery {
    exchange: Option<String>,
    symbol: Option<String>,
    timeframe: Option<String>,
    bars: Option<u32>,
}

const MAX_BARS: u32 = 1_000;

pub async fn page(
    State(pages): State<Pages>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(chart): Query<ChartQuery>,
) -> Response {
    if pages.auth.enabled() {
        let header = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(e) = pages.auth.verify(header, Some(peer.ip())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    http::header::WWW_AUTHENTICATE,
                    "Basic realm=\"ohlcv-server\", charset=\"UTF-8\"",
                )],
                tonic::Status::from(e).message().to_string(),
            )
                .into_response();
        }
    }
    match render(&pages, chart).await {
        Ok(html) => Html(html).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn duration(us: i64) -> String {
    let s = us / 1_000_000;
    match s {
        _ if s < 120 => format!("{s} s"),
        _ if s < 7_200 => format!("{} min", s / 60),
        _ if s < 172_800 => format!("{} h", s / 3_600),
        _ => format!("{} d", s / 86_400),
    }
}

async fn render(pages: &Pages, chart: ChartQuery) -> Result<String, String> {
    let now = pages.probe.clock.now_us();
    let mut out = String::with_capacity(32 * 1024);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ohlcv-server</title>\
         <meta http-equiv=\"refresh\" content=\"30\"><style>{STYLE}</style></head><body>\
         <h1>ohlcv-server {}</h1><p class=\"dim\">{} UTC{}</p>",
        env!("CARGO_PKG_VERSION"),
        time(now),
        if pages.scheduler.is_paused() {
            " &middot; <b>schedules paused</b>"
        } else {
            ""
        }
    );

    if let Some(running) = crate::build::progress::current() {
        let _ = write!(out, "<h2>Running build</h2><p>{running}</p>");
    }
    out.push_str(
        "<h2>Build lag</h2><table><tr><th>timeframe</th><th>persisted up to</th><th>lag</th></tr>",
    );
    for (tf, watermark) in pages.probe.cache.watermarks() {
        let (until, lag) = match watermark {
            Some(w) => (time(w), duration(now - w)),
            None => ("nothing built".to_string(), String::new()),
        };
        let _ = write!(out, "<tr><td>{tf}</td><td>{until}</td><td>{lag}</td></tr>");
    }
    if let Some(newest) = pages.probe.cache.newest_trade() {
        let _ = write!(
            out,
            "<tr><td>trades</td><td>newest {}</td><td>{}</td></tr>",
            time(newest),
            duration(now - newest)
        );
    }
    out.push_str("</table>");

    let members = pages.members.list(now).await.map_err(|e| e.to_string())?;
    out.push_str(
        "<h2>Servers</h2><table><tr><th>address</th><th>role</th><th>snapshot lag</th>\
         <th>last heartbeat</th></tr>",
    );
    for m in &members {
        let alive = now - m.heartbeat_at <= super::cluster::ALIVE_US;
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{} ms</td><td>{}</td></tr>",
            esc(&m.address),
            if alive { "ok" } else { "bad" },
            if alive {
                esc(&m.role)
            } else {
                format!("{} (gone)", esc(&m.role))
            },
            m.lag_ms,
            time(m.heartbeat_at)
        );
    }
    out.push_str("</table>");

    let jobs = pages
        .scheduler
        .jobs(&pages.history)
        .await
        .map_err(|e| e.to_string())?;
    out.push_str(
        "<h2>Jobs</h2><table><tr><th>job</th><th>every</th><th>next run</th><th>last run</th>\
         <th>status</th><th>took</th><th>success 24 h</th></tr>",
    );
    for job in &jobs {
        let last = job.last_run.as_ref();
        let status = last.map_or("", |r| r.status.as_str());
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&job.schedule.job.to_string()),
            duration(job.schedule.every_us),
            job.next_run_us.map(time).unwrap_or_else(|| "paused".into()),
            last.map(|r| time(r.started_at)).unwrap_or_default(),
            if status == "succeeded" { "ok" } else { "bad" },
            esc(status),
            last.map(|r| format!("{:.2} s", (r.finished_at - r.started_at) as f64 / 1e6))
                .unwrap_or_default(),
            job.success_rate_24h
                .map(|r| format!("{:.0} %", r * 100.0))
                .unwrap_or_default(),
        );
    }
    out.push_str("</table>");

    let failures: Vec<_> = pages
        .history
        .recent(500)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.status != crate::jobs::Outcome::Succeeded)
        .take(20)
        .collect();
    out.push_str("<h2>Recent failures</h2>");
    if failures.is_empty() {
        out.push_str("<p class=\"dim\">none</p>");
    } else {
        out.push_str(
            "<table><tr><th>at</th><th>job</th><th>attempt</th><th>status</th><th>error</th></tr>",
        );
        for r in &failures {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td class=\"bad\">{}</td><td class=\"err\">{}</td></tr>",
                time(r.started_at),
                esc(r.job.as_str()),
                esc(r.timeframe.as_deref().unwrap_or("")),
                r.attempt,
                r.status,
                esc(r.error.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }

    let checks = pages.reports.checks(20).await.map_err(|e| e.to_string())?;
    out.push_str("<h2>Last validation</h2>");
    if checks.is_empty() {
        out.push_str("<p class=\"dim\">not run yet</p>");
    } else {
        out.push_str(
            "<table><tr><th>at</th><th>timeframe</th><th>check</th><th>rows</th><th>violations</th><th>first keys</th></tr>",
        );
        for c in &checks {
            let samples: Vec<String> = c.samples.iter().take(3).map(|v| v.to_string()).collect();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td class=\"err\">{}</td></tr>",
                time(c.run_at),
                esc(&c.timeframe),
                esc(&c.check),
                c.rows_checked,
                if c.violations == 0 { "ok" } else { "bad" },
                c.violations,
                esc(&samples.join("; "))
            );
        }
        out.push_str("</table>");
    }

    chart_section(pages, chart, now, &mut out).await;
    out.push_str("</body></html>");
    Ok(out)
}

async fn chart_section(pages: &Pages, chart: ChartQuery, now: i64, out: &mut String) {
    let series = pages.probe.cache.known_series();
    let first = series.iter().next().cloned().unwrap_or_default();
    let exchange = chart.exchange.unwrap_or(first.0);
    let symbol = chart.symbol.unwrap_or(first.1);
    let timeframe = chart.timeframe.unwrap_or_else(|| "1m".to_string());
    let bars = chart.bars.unwrap_or(120).clamp(10, MAX_BARS);
    let _ = write!(
        out,
        "<h2>Candles</h2><form method=\"get\"><select name=\"series\" disabled>{}</select>\
         exchange <input name=\"exchange\" value=\"{}\"> symbol <input name=\"symbol\" value=\"{}\"> \
         timeframe <input name=\"timeframe\" value=\"{}\" size=\"4\"> bars <input name=\"bars\" \
         value=\"{bars}\" size=\"4\"> <button>show</button></form>",
        series
            .iter()
            .map(|(e, s)| format!("<option>{} {}</option>", esc(e), esc(s)))
            .collect::<String>(),
        esc(&exchange),
        esc(&symbol),
        esc(&timeframe)
    );
    if exchange.is_empty() {
        out.push_str("<p class=\"dim\">no series yet</p>");
        return;
    }
    let windows = match Windows::parse(&timeframe, None) {
        Ok(w) => w,
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">{}</p>", esc(&e.to_string()));
            return;
        }
    };
    let end = windows.ceil(now + 1);
    let width = match windows {
        Windows::Fixed { width, .. } => width,
        Windows::Local { .. } => 86_400_000_000,
    };
    let request = Request {
        exchange: exchange.clone(),
        symbol: symbol.clone(),
        windows,
        start: end - width * bars as i64,
        end,
        fill: Fill::None,
        last: None,
        as_of: None,
    };
    match crate::candles::candles(&pages.probe.cache, &request).await {
        Ok(batch) if batch.num_rows() > 0 => out.push_str(&svg(&batch)),
        Ok(_) => out.push_str("<p class=\"dim\">no candles in this range</p>"),
        Err(e) => {
            let _ = write!(out, "<p class=\"bad\">{}</p>", esc(&e.to_string()));
        }
    }
    out.push_str(
        "<p class=\"dim\">filled: final bars; outlined: live bars (windows not built yet, \
         computed from unbuilt trades).</p>",
    );
}

/// A candlestick chart of `batch` (rows of `candles()`, in time order).
fn svg(batch: &RecordBatch) -> String {
    let col = |name: &str| batch.column_by_name(name).expect("candles() column");
    let price = |name: &str| col(name).as_primitive::<Float64Type>().clone();
    let (open, high, low, close) = (price("open"), price("high"), price("low"), price("close"));
    let start = col("window_start")
        .as_primitive::<TimestampMicrosecondType>()
        .clone();
    let fin = col("is_final").as_boolean().clone();
    let n = batch.num_rows();
    let lo = low.values().iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = high
        .values()
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let (w, h, pad) = (960.0, 360.0, 40.0);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = |p: f64| pad + (hi - p) / span * (h - 2.0 * pad);
    let step = (w - 2.0 * pad) / n as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>\
         <text x=\"4\" y=\"{}\" class=\"axis\">{hi:.6}</text><text x=\"4\" y=\"{}\" class=\"axis\">{lo:.6}</text>",
        pad - 6.0,
        h - pad + 14.0
    );
    for i in 0..n {
        let x = pad + step * (i as f64 + 0.5);
        let (o, c) = (open.value(i), close.value(i));
        let color = if c >= o { "#1a7f37" } else { "#cf222e" };
        let top = y(o.max(c));
        let body = (y(o.min(c)) - top).max(1.0);
        let live = !fin.value(i) || fin.is_null(i);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\"/>\
             <rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{:.1}\" height=\"{body:.1}\" stroke=\"{color}\" \
             fill=\"{}\"{}><title>{} o {o} h {} l {} c {c}{}</title></rect>",
            y(high.value(i)),
            y(low.value(i)),
            x - step * 0.35,
            (step * 0.7).max(1.0),
            if live { "none" } else { color },
            if live { " stroke-dasharray=\"2,1\"" } else { "" },
            time(start.value(i)),
            high.value(i),
            low.value(i),
            if live { " (live)" } else { "" }
        );
    }
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{}\" class=\"axis\">{}</text><text x=\"{}\" y=\"{}\" class=\"axis\" \
         text-anchor=\"end\">{}</text></svg>",
        h - 8.0,
        time(start.value(0)),
        w - pad,
        h - 8.0,
        time(start.value(n - 1))
    );
    s
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#1f2328}\
table{border-collapse:collapse;margin-bottom:16px}td,th{border-bottom:1px solid #d0d7de;\
padding:4px 10px;text-align:left}th{background:#f6f8fa}.ok{color:#1a7f37}.bad{color:#cf222e;\
font-weight:600}.err{font-family:monospace;font-size:12px;max-width:640px}.dim{color:#656d76}\
.axis{font:11px monospace;fill:#656d76}input{width:8em}";
