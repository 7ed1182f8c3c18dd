//! Operations tooling against the real server: `/metrics` scraped over HTTP after a build and
//! some queries, `/healthz` and `/readyz`, the request id on gRPC responses, the alert rules
//! checked and unit-tested by `promtool`, and a real Prometheus scraping the server and
//! loading the rules.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use common::server::{deployment_with_bars, options, Server};
use ohlcv_server::admin::proto::admin_service_client::AdminServiceClient;
use ohlcv_server::admin::proto::TriggerBuildRequest;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let port = free_port();
    let mut opts = options();
    opts.telemetry_listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(&d, opts).await;
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
            r#"job="build""#,
            r#"timeframe="1m""#,
            r#"outcome="succeeded""#,
        ],
    );
    assert!(built >= Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            "ohlcv_job_duration_seconds_count",
            &[r#"job="build""#]
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

/// A real Prometheus scrapes the server with the repository's alert rules loaded, and its
/// query API returns the build lag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_server_and_loads_the_rules() {
    let Some(prometheus) = tool("prometheus") else {
        eprintln!("skipping: prometheus is not installed");
        return;
    };
    let d = deployment_with_bars().await;
    let port = free_port();
    let mut opts = options();
    opts.telemetry_listen = format!("127.0.0.1:{port}");
    let server = Server::start_with(&d, opts).await;
    AdminServiceClient::new(server.channel().await)
        .trigger_build(TriggerBuildRequest {
            timeframes: vec!["1m".into()],
        })
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: ohlcv\n    static_configs:\n      \
             - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .unwrap();
    let web = free_port();
    let mut child = Command::new(prometheus)
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
    let http = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{web}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let lag = loop {
        let answer = http
            .get(format!("{api}/query"))
            .query(&[(
                "query",
                r#"ohlcv_build_lag_seconds{job="ohlcv",timeframe="1m"}"#,
            )])
            .send()
            .await;
        if let Ok(answer) = answer {
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            if let Some(value) = body["data"]["result"][0]["value"][1].as_str() {
                break value.parse::<f64>().unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the build lag"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(lag >= 0.0);
    let rules: serde_json::Value = http
        .get(format!("{api}/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 7, "{rules}");
    let _ = child.kill();
    let _ = child.wait();
    server.shutdown_and_wait().await;
}
