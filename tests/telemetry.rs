//! Operations tooling against the real server: `/metrics` scraped over HTTP after a build and
//! some queries, `/healthz` and `/readyz`, the request id on gRPC responses, the alert rules
//! checked and unit-tested by `promtool`, and a real Prometheus scraping the server, loading
//! the rules and answering every query of the Grafana dashboard.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use common::server::{deployment_with_bars, options, Server};
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::TriggerBuildRequest;

/// `name` on the PATH, or `None` outside CI (where it must be installed: `.ci/run`).
fn tool(name: &str) -> Option<&str> {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("CI must install {name} (the prometheus package)");
    }
    found.then_some(name)
}

/// Waits until the telemetry endpoint on `port` answers (it is bound while the server starts,
/// after the Flight port the test server waits for).
async fn wait_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "telemetry never came up on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of the first sample of `metric` whose labels include every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split(['{', ' ']).next() == Some(metric) && labels.iter().all(|p| l.contains(p))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_request_ids_over_http() {
    let d = deployment_with_bars().await;
    let port = common::free_port();
    let mut opts = options();
    opts.telemetry_listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(&d, opts).await;
    wait_up(port).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let healthz = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    let readyz = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(readyz.status(), 200, "{}", readyz.text().await.unwrap());

    let mut admin = AdminServiceClient::new(server.channel().await);
    admin
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into(), "5m".into()],
        })
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(server.channel().await);
    client
        .execute("select count(*) from ohlcv_1m".into(), None)
        .await
        .unwrap();
    let err = client
        .execute("select * from no_such_table".into(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");

    // Every gRPC response carries a request id.
    let mut raw = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let response = raw
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let id = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id");
    assert_eq!(id.to_str().unwrap().len(), 32);

    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let built = sample(
        &text,
        "ohlcv_job_runs_total",
        &[
            r#"job_name="build""#,
            r#"timeframe="1m""#,
            r#"outcome="succeeded""#,
        ],
    );
    assert!(built >= Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            "ohlcv_job_duration_seconds_count",
            // Every job's series exists from the start (at zero): name the one that ran.
            &[r#"job_name="build""#, r#"timeframe="1m""#]
        ) >= Some(1.0),
        "{text}"
    );
    let lag =
        sample(&text, "ohlcv_build_lag_seconds", &[r#"timeframe="1m""#]).expect("build lag of 1m");
    assert!(lag >= 0.0, "{lag}");
    assert!(
        sample(
            &text,
            "ohlcv_requests_total",
            &[r#"kind="query""#, r#"code="Ok""#]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ohlcv_requests_total",
            &[r#"kind="query""#, r#"code="NotFound""#]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "ohlcv_request_duration_seconds_count",
            &[r#"kind="admin""#]
        ) >= Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "ohlcv_cache_entries", &[]).is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "process_resident_memory_bytes", &[]) > Some(1e6),
        "{text}"
    );
    server.shutdown_and_wait().await;
}

#[test]
fn alert_rules_pass_promtool() {
    let Some(promtool) = tool("promtool") else {
        eprintln!("skipping: promtool is not installed");
        return;
    };
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");

/// A Prometheus of the distribution, scraping every second with the repository's rules.
struct Prometheus {
    child: std::process::Child,
    api: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &str, targets: &[u16]) -> Prometheus {
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        Prometheus::with_config(
            binary,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {RULES}\n\
                 scrape_configs:\n  - job_name: ohlcv\n    static_configs:\n      \
                 - targets: [{}]\n",
                targets.join(", ")
            ),
        )
    }

    fn with_config(binary: &str, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let web = common::free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            api: format!("http://127.0.0.1:{web}/api/v1"),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// The result vector of an instant query (empty while Prometheus is not up yet).
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let Ok(answer) = self
            .http
            .get(format!("{}/query", self.api))
            .query(&[("query", expr)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: serde_json::Value = answer.json().await.unwrap_or_default();
        if body["status"] == "error" {
            panic!("{expr}: {body}");
        }
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `expr` returns data, and returns it.
    async fn until_data(&self, expr: &str, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let result = self.query(expr).await;
            if !result.is_empty() {
                return result;
            }
            if Instant::now() > deadline {
                let targets = self.get("targets").await;
                panic!("no data for {expr}; targets: {targets}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/{path}", self.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The queries of the Grafana dashboard, with Grafana's variables as Prometheus takes them.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/dashboards/ohlcv-server.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(
                target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            );
        }
    }
    out
}

/// Every metric the alert rules read (alert names are CamelCase and runbook anchors have no
/// underscore, so every `ohlcv_` word is a metric).
fn alert_metrics() -> std::collections::BTreeSet<String> {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/alerts.yml"
    ))
    .unwrap();
    let mut metrics: std::collections::BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ohlcv_"))
        .map(str::to_string)
        .collect();
    if rules.contains("up{") {
        metrics.insert("up".to_string());
    }
    metrics
}

/// A real Prometheus scrapes two servers (one ingesting, building, validating and serving
/// queries; one whose `[source]` is missing, so its builds fail after their retries) with the
/// repository's rules loaded: every query of the Grafana dashboard and every metric the rules
/// read returns data, the build-failure alert fires, and the build lag rises while the
/// scheduler is paused. (Both servers share this process's metrics registry; in production
/// each process is one server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_every_dashboard_query_and_the_alerts_fire() {
    let Some(prometheus) = tool("prometheus") else {
        eprintln!("skipping: prometheus is not installed");
        return;
    };
    use common::trades::{trade, trade_batch};
    use futures::TryStreamExt;

    // A: ingest, builds, validation, queries.
    let d = deployment_with_bars().await;
    let clock = ohlcv_server::clock::ManualClock::at(common::T0 + 3 * common::DAY);
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let mut opts = options();
    opts.clock = std::sync::Arc::new(clock.clone());
    opts.telemetry_listen = format!("127.0.0.1:{port_a}");
    let a = Server::start_with(&d, opts).await;
    let mut client = FlightSqlServiceClient::new(a.channel().await);
    let fresh: Vec<_> = (0..50)
        .map(|i| {
            trade(
                "kraken",
                "ETH-USD",
                &format!("p{i}"),
                common::T0 + 3 * common::DAY - 600_000_000 + i * 1_000_000,
                50.0,
                1.0,
            )
        })
        .collect();
    common::server::ingest_trades(&mut client, trade_batch(&fresh))
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(a.channel().await);
    admin
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into(), "5m".into(), "1h".into()],
        })
        .await
        .unwrap();
    admin
        .validate(ohlcv_server::admin::proto::ValidateRequest {
            timeframes: vec!["1m".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let info = client
        .execute(
            "select * from candles('kraken', 'BTC-USD', '1m', '2024-01-01', '2024-01-02')".into(),
            None,
        )
        .await
        .unwrap();
    let mut stream = client
        .do_get(info.endpoint[0].ticket.clone().unwrap())
        .await
        .unwrap();
    while stream.try_next().await.unwrap().is_some() {}

    // B: builds that fail after their retries.
    let dir_b = tempfile::tempdir().unwrap();
    let config_b = ohlcv_server::config::Config {
        data_dir: dir_b.path().to_path_buf(),
        source: Some(ohlcv_server::storage::SourceConfig {
            namespace: Some("lake".into()),
            table: "gone".into(),
            exchange: None,
            strict: false,
            columns: Default::default(),
        }),
        ..Default::default()
    };
    let writer_b = common::writer_for(&config_b).await;
    let d_b = common::Deployment {
        dir: dir_b,
        config: config_b,
        writer: writer_b,
    };
    let mut opts_b = options();
    opts_b.telemetry_listen = format!("127.0.0.1:{port_b}");
    opts_b.retry.backoff_base = Duration::from_millis(10);
    let b = Server::start_with(&d_b, opts_b).await;
    wait_up(port_a).await;
    wait_up(port_b).await;
    let prom = Prometheus::start(prometheus, &[port_a, port_b]);
    // Scraped once before the failures, so that they show as an increase.
    prom.until_data(
        r#"ohlcv_job_runs_total{job_name="build",timeframe="1m",outcome="failed"}"#,
        Duration::from_secs(60),
    )
    .await;
    AdminServiceClient::new(b.channel().await)
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .expect_err("the build of a missing source fails");

    for expr in dashboard_queries() {
        prom.until_data(&expr, Duration::from_secs(60)).await;
    }
    let metrics = alert_metrics();
    assert!(metrics.len() >= 7, "{metrics:?}");
    for metric in &metrics {
        prom.until_data(&format!("count({metric})"), Duration::from_secs(30))
            .await;
    }

    // The failure alert fires (it has no `for`).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alerts = prom.get("alerts").await;
        let firing = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["labels"]["alertname"] == "OhlcvBuildFailing" && a["state"] == "firing");
        if firing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OhlcvBuildFailing never fired: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rules = prom.get("rules").await;
    assert_eq!(
        rules["data"]["groups"][0]["rules"]
            .as_array()
            .map_or(0, Vec::len),
        7,
        "{rules}"
    );

    // Paused schedules and ten minutes later: the 1m build lag has grown by ten minutes.
    admin
        .pause_schedules(ohlcv_server::admin::proto::PauseSchedulesRequest {})
        .await
        .unwrap();
    // Server b never builds: its lag is unknown (NaN, exported from the start); a's is the
    // one that grows.
    let lag = |result: Vec<serde_json::Value>| -> f64 {
        result
            .iter()
            .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            .filter(|v| !v.is_nan())
            .fold(f64::NAN, f64::max)
    };
    let query = r#"ohlcv_build_lag_seconds{timeframe="1m"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let before = lag(prom.until_data(query, Duration::from_secs(10)).await);
        if !before.is_nan() {
            break before;
        }
        assert!(Instant::now() < deadline, "no known 1m build lag");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    clock.advance(600_000_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = lag(prom.until_data(query, Duration::from_secs(10)).await);
        if now >= before + 600.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag stayed at {now} (was {before})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prom);
    a.shutdown_and_wait().await;
    b.shutdown_and_wait().await;
}

/// The status page: jobs, failures, validation and a candlestick chart, asking for a user
/// when users are configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_jobs_and_candles_to_known_users() {
    let d = deployment_with_bars().await;
    let port = common::free_port();
    let mut opts = common::server::options_with_users();
    opts.telemetry_listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(&d, opts).await;
    wait_up(port).await;
    let admin = ohlcv_server::admin::client::connect(
        &format!("http://{}", server.addr),
        Some("ada"),
        Some("ada-pw"),
    )
    .await
    .unwrap();
    let mut admin = admin;
    admin
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into(), "1h".into()],
        })
        .await
        .unwrap();
    admin
        .validate(ohlcv_server::admin::proto::ValidateRequest {
            timeframes: vec!["1m".into()],
            ..Default::default()
        })
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let url = format!(
        "http://127.0.0.1:{port}/status?exchange=kraken&symbol=BTC-USD&timeframe=1h&bars=80"
    );
    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let wrong = http
        .get(&url)
        .basic_auth("rita", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let page = http
        .get(&url)
        .basic_auth("rita", Some("rita-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for expected in [
        "Build lag",
        "Jobs",
        "build 1m",
        "succeeded",
        "Last validation",
        "ohlc_bounds",
        "<svg",
        "value=\"kraken\"",
    ] {
        assert!(
            html.contains(expected),
            "{expected} missing from the page:\n{html}"
        );
    }
    // No request leaves the page: no script, no external resource.
    assert!(!html.contains("<script"), "{html}");
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("url("),
        "{html}"
    );
    // The one hour of bars, 80 hourly windows back from the server's clock (T0 + 3 days).
    assert_eq!(html.matches("<rect x=").count(), 1, "{html}");
    server.shutdown_and_wait().await;
}

/// The status page in a real browser (headless Chromium, every host but the server unresolvable):
/// it renders the jobs and a chart with one candle per hourly window of the loaded hour's
/// 1m bars rolled up to 5m, and a screenshot is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_headless_chromium() {
    let Some(chromium) = tool("chromium") else {
        eprintln!("skipping: chromium is not installed");
        return;
    };
    let d = deployment_with_bars().await;
    let port = common::free_port();
    let mut opts = options();
    opts.telemetry_listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(&d, opts).await;
    wait_up(port).await;
    AdminServiceClient::new(server.channel().await)
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .unwrap();
    // The deployment holds one hour of trades from T0; the server's clock is T0 + 3 days, so
    // 1,000 5m windows back reach it: twelve candles.
    let url = format!(
        "http://127.0.0.1:{port}/status?exchange=kraken&symbol=BTC-USD&timeframe=5m&bars=1000"
    );
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("status.png");
    let chromium = chromium.to_string();
    let profile = dir.path().join("profile");
    let run = move |extra: Vec<String>| {
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--window-size=1280,2400",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .output()
            .unwrap()
    };
    let (dom_url, shot_arg, shot_url) =
        (url.clone(), format!("--screenshot={}", shot.display()), url);
    let dom = tokio::task::spawn_blocking({
        let run = run.clone();
        move || run(vec!["--dump-dom".into(), dom_url])
    })
    .await
    .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(html.contains("build 1m"), "{html}");
    assert!(html.contains("<svg"), "{html}");
    assert_eq!(html.matches("<rect x=").count(), 12, "{html}");
    let shot_run = tokio::task::spawn_blocking(move || run(vec![shot_arg, shot_url]))
        .await
        .unwrap();
    assert!(
        shot_run.status.success(),
        "{}",
        String::from_utf8_lossy(&shot_run.stderr)
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    server.shutdown_and_wait().await;
}

/// A YAML file of the repository as JSON (read by PyYAML: no YAML crate for one test).
fn yaml(path: &str) -> serde_json::Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            &format!("{}/{path}", env!("CARGO_MANIFEST_DIR")),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn strings(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// deploy/docker-compose.yml cannot be brought up here (no Docker engine on this machine or in
/// CI), so its services run as written without containers: the server with the compose's
/// command and environment on the PostgreSQL catalog, Prometheus with deploy's config and
/// rules. Replaced: host names by 127.0.0.1 and the test's database, `/data` by a temp dir,
/// the ports by free ones, the scrape interval by 1 s, and a catalog name of its own (the
/// database is shared with other tests). Checked as well: the names the services use for each
/// other agree (catalog URL and the PostgreSQL service, published ports, Prometheus's target
/// and rule path and their mounts, Grafana's data source and dashboard path and their mounts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_services_run_as_written() {
    let Some(url) = common::postgres_url() else {
        eprintln!("skipping: TEST_POSTGRES_URL is not set");
        return;
    };
    let Some(binary) = tool("prometheus") else {
        eprintln!("skipping: prometheus is not installed");
        return;
    };
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    let server = &services["ohlcv"];
    let env: Vec<(String, String)> = server["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let setting = |name: &str| -> String {
        let (_, v) = env.iter().find(|(k, _)| k == name).unwrap();
        v.trim_matches('"').to_string()
    };

    // The services name each other consistently.
    let pg = &services["postgres"]["environment"];
    let catalog = format!(
        "postgres://{}:{}@postgres:5432/{}",
        pg["POSTGRES_USER"].as_str().unwrap(),
        pg["POSTGRES_PASSWORD"].as_str().unwrap(),
        pg["POSTGRES_DB"].as_str().unwrap()
    );
    assert_eq!(setting("OHLCV_CATALOG__URL"), catalog);
    let command = strings(&server["command"]);
    assert!(
        command.contains(&"0.0.0.0:50051".to_string()),
        "{command:?}"
    );
    assert_eq!(setting("OHLCV_TELEMETRY__LISTEN"), "0.0.0.0:50052");
    assert_eq!(
        strings(&server["ports"]),
        ["127.0.0.1:50051:50051", "127.0.0.1:50052:50052"]
    );
    let scrape = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(
        strings(&scrape["scrape_configs"][0]["static_configs"][0]["targets"]),
        ["ohlcv:50052"]
    );
    assert_eq!(
        strings(&scrape["rule_files"]),
        ["/etc/prometheus/alerts.yml"]
    );
    let mounts = strings(&services["prometheus"]["volumes"]);
    assert!(mounts.contains(&"./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro".into()));
    assert!(
        mounts.contains(&"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro".into())
    );
    let source = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(source["datasources"][0]["url"], "http://prometheus:9090");
    assert!(strings(&services["prometheus"]["ports"]).contains(&"127.0.0.1:9090:9090".into()));
    let dashboards = yaml("deploy/grafana/provisioning/dashboards/ohlcv.yml");
    assert_eq!(
        dashboards["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let mounts = strings(&services["grafana"]["volumes"]);
    assert!(mounts.contains(&"./grafana/dashboards:/var/lib/grafana/dashboards:ro".into()));
    assert!(mounts.contains(&"./grafana/provisioning:/etc/grafana/provisioning:ro".into()));

    // The server, as the compose file runs it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let telemetry = common::free_port();
    let here = |value: &str| {
        value
            .replace(&catalog, &url)
            .replace("/data", &data.display().to_string())
            .replace("0.0.0.0:50051", "127.0.0.1:0")
            .replace("0.0.0.0:50052", &format!("127.0.0.1:{telemetry}"))
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .args(command.iter().map(|a| here(a)))
        .envs(env.iter().map(|(k, v)| (k.clone(), here(v))))
        .env(
            "OHLCV_CATALOG__NAME",
            format!("compose_{}", uuid::Uuid::new_v4().simple()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = common::server::listening_address(&mut child);
    wait_up(telemetry).await;

    // Prometheus with deploy's config: it scrapes the server, loads every rule, and sees the
    // demo trades committed.
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/prometheus.yml"
    ))
    .unwrap()
    .replace("ohlcv:50052", &format!("127.0.0.1:{telemetry}"))
    .replace("/etc/prometheus/alerts.yml", RULES)
    .replace("15s", "1s");
    let prometheus = Prometheus::with_config(binary, &config);
    prometheus
        .until_data("up{job=\"ohlcv\"} == 1", Duration::from_secs(60))
        .await;
    prometheus
        .until_data(
            "sum(ohlcv_commits_total{table=\"trades\"}) > 0",
            Duration::from_secs(60),
        )
        .await;
    let rules = prometheus.get("rules").await;
    let loaded: Vec<&serde_json::Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.len() >= 6, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Flight SQL answers on the compose's port with the demo's trades.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    let batches = common::server::fetch(&mut client, "select count(*) from trades").await;
    use arrow::array::AsArray;
    let trades = batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0);
    assert!(trades > 0, "the demo feeds trades");
    common::server::terminate(child);
}

/// A fresh server, in a process of its own (the metrics registry is per process), exports
/// every metric family that the Grafana dashboard and the alert rules name before any build,
/// query or commit has happened: each at zero (lags unknown yet: NaN) with its known label
/// values, so panels show zero instead of "no data" and rules can be evaluated at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exports_every_metric_family_the_deploy_files_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ohlcv-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OHLCV_TELEMETRY__LISTEN", format!("\"127.0.0.1:{port}\""))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_up(port).await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.kill().await.unwrap();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let family = |name: &str| -> String {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
            .to_string()
    };
    let mut named: std::collections::BTreeSet<String> = alert_metrics();
    named.remove("up");
    for query in dashboard_queries() {
        named.extend(
            query
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("ohlcv_"))
                .map(str::to_string),
        );
    }
    assert!(named.len() >= 10, "{named:?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !exported.iter().any(|e| family(e) == family(n)))
        .collect();
    assert!(
        missing.is_empty(),
        "not exported by a fresh server: {missing:?}\n{text}"
    );
    // Known label values are there at zero: a job that has never run, a check never failed.
    for (metric, labels) in [
        (
            "ohlcv_job_runs_total",
            &[
                "job_name=\"build\"",
                "timeframe=\"1m\"",
                "outcome=\"failed\"",
            ][..],
        ),
        (
            "ohlcv_job_runs_total",
            &["job_name=\"validate\"", "outcome=\"cancelled\""][..],
        ),
        (
            "ohlcv_commits_total",
            &["table=\"ohlcv_1d\"", "outcome=\"lost\""][..],
        ),
        (
            "ohlcv_requests_total",
            &["kind=\"query\"", "code=\"Internal\""][..],
        ),
        ("ohlcv_cache_events_total", &["event=\"eviction\""][..]),
        (
            "ohlcv_validation_violations",
            &["timeframe=\"1h\"", "check=\"ohlc_bounds\""][..],
        ),
    ] {
        assert_eq!(
            sample(&text, metric, labels),
            Some(0.0),
            "{metric} {labels:?}\n{text}"
        );
    }
    let lag = sample(&text, "ohlcv_build_lag_seconds", &["timeframe=\"1m\""]);
    assert!(lag.is_some_and(f64::is_nan), "{lag:?}");
}
