//! Configuration: a TOML file, overridden by `OHLCV_*` environment variables, overridden by
//! command-line flags (applied by the caller).
//!
//! Environment variables map onto TOML keys: `OHLCV_DATA_DIR` is `data_dir`, and a double
//! underscore descends into a section, so `OHLCV_CATALOG__URL` is `[catalog] url`. Values are
//! read as TOML literals when they parse as one (numbers, booleans), else as strings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::alerts::AlertsConfig;
pub use crate::storage::settings::{CatalogConfig, StorageConfig};

/// Prefix of environment variables that override the file.
pub const ENV_PREFIX: &str = "OHLCV_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

/// The whole server configuration; every field has a default so an empty file is valid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Root of the embedded deployment: `catalog.db`, `warehouse/` and the writer lock live here.
    pub data_dir: PathBuf,
    pub catalog: CatalogConfig,
    pub build: BuildConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub retention: RetentionConfig,
    pub alerts: AlertsConfig,
    pub quality: crate::jobs::ScheduleSettings,
    pub cache: CacheSection,
    /// Plausibility limits of trades coming in (ingest, `load`).
    pub ingest: crate::trades::Limits,
    /// Build from a trades table another pipeline owns instead of `market.trades`.
    pub source: Option<crate::storage::SourceConfig>,
    /// `[s3]`: how to reach an S3-compatible warehouse.
    pub s3: crate::storage::S3Config,
    pub telemetry: TelemetryConfig,
    pub cluster: ClusterConfig,
}

/// `[cache]`: the hot candle cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    pub enabled: bool,
    pub max_mb: u64,
    /// Hours each timeframe keeps hot, by timeframe (`1m`, `5m`, ...); 0 keeps everything.
    pub horizon_hours: std::collections::BTreeMap<String, u64>,
    /// Most-queried series loaded at start.
    pub warm_series: usize,
    /// How often the trades table is checked for commits of other engines, whose trades then
    /// show as live bars (milliseconds; 0: only our own ingest shows).
    pub trades_poll_ms: u64,
    /// Most windows of one candle request with `fill` or `tz`.
    pub max_candle_windows: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        let d = crate::candles::cache::CacheConfig::default();
        CacheSection {
            enabled: d.enabled,
            max_mb: d.max_bytes >> 20,
            horizon_hours: d
                .horizons
                .iter()
                .map(|(tf, h)| {
                    (
                        tf.to_string(),
                        h.map_or(0, |us| (us / 3_600_000_000) as u64),
                    )
                })
                .collect(),
            warm_series: d.warm_series,
            trades_poll_ms: d.trades_poll_ms,
            max_candle_windows: d.max_windows,
        }
    }
}

impl CacheSection {
    pub fn settings(&self) -> Result<crate::candles::cache::CacheConfig, ConfigError> {
        let mut c = crate::candles::cache::CacheConfig {
            enabled: self.enabled,
            max_bytes: self.max_mb << 20,
            warm_series: self.warm_series,
            trades_poll_ms: self.trades_poll_ms,
            max_windows: self.max_candle_windows,
            ..Default::default()
        };
        for (name, hours) in &self.horizon_hours {
            let tf =
                name.parse::<crate::timeframe::Timeframe>()
                    .map_err(|e| ConfigError::Invalid {
                        origin: "[cache] horizon_hours".into(),
                        message: e.to_string(),
                    })?;
            c.horizons
                .insert(tf, (*hours > 0).then(|| *hours as i64 * 3_600_000_000));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days each table keeps, by table name (`trades`, `ohlcv_1m`, ...); absent or 0 keeps
    /// everything.
    pub days: std::collections::BTreeMap<String, u32>,
    /// How far back point-in-time reads (`candles(..., as_of => t)`, `bars_as_of`) must work:
    /// the daily retention job expires only snapshots no moment in this window needs.
    pub history_days: u32,
    /// The same window in hours (the older setting); the longer of the two applies.
    pub snapshot_keep_hours: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            days: [
                ("ohlcv_1m", 90),
                ("ohlcv_5m", 180),
                ("ohlcv_30m", 365),
                ("ohlcv_1h", 730),
                ("ohlcv_1d", 1825),
            ]
            .into_iter()
            .map(|(t, d)| (t.to_string(), d))
            .collect(),
            history_days: 1,
            snapshot_keep_hours: 0,
        }
    }
}

impl RetentionConfig {
    pub fn policy(&self) -> Result<crate::build::retention::RetentionPolicy, ConfigError> {
        let tables: Vec<String> = crate::storage::TableKind::all().map(|k| k.name()).collect();
        if let Some(unknown) = self.days.keys().find(|t| !tables.contains(t)) {
            return Err(ConfigError::Invalid {
                origin: "retention.days".into(),
                message: format!("unknown table '{unknown}' (tables: {})", tables.join(", ")),
            });
        }
        let history_hours = (self.history_days as u64 * 24).max(self.snapshot_keep_hours as u64);
        Ok(crate::build::retention::RetentionPolicy::from_days(
            &self.days,
            history_hours as i64 * 3_600_000_000,
        ))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// PEM certificate chain and private key; both set means the server speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Memory all running queries may hold together; a query past it fails with
    /// `ResourceExhausted` instead of taking the server down.
    pub query_memory_limit_mb: u64,
    /// Longest a statement may run before it is stopped with `DEADLINE_EXCEEDED` (0: no
    /// limit); a client's own shorter deadline (`grpc-timeout`) wins.
    pub query_timeout_secs: u64,
    /// Live subscriptions (`live_candles`, DoExchange) open at once; they are not held to
    /// `query_timeout_secs`.
    pub max_subscriptions: usize,
    /// Of those, by one user.
    pub max_subscriptions_per_user: usize,
    /// A subscriber that takes nothing for this long is dropped (its stream ends with an
    /// error saying so).
    pub subscriber_timeout_ms: u64,
    /// Latest windows a subscription tracks per series: the most its first message holds,
    /// and how far back a revision is pushed.
    pub subscription_windows: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let push = crate::push::PushLimits::default();
        ServerConfig {
            tls_cert: None,
            tls_key: None,
            query_memory_limit_mb: 2048,
            query_timeout_secs: 300,
            max_subscriptions: push.max_subscriptions,
            max_subscriptions_per_user: push.max_per_user,
            subscriber_timeout_ms: push.stall_timeout.as_millis() as u64,
            subscription_windows: push.track_windows,
        }
    }
}

impl ServerConfig {
    pub fn push_limits(&self) -> crate::push::PushLimits {
        crate::push::PushLimits {
            max_subscriptions: self.max_subscriptions,
            max_per_user: self.max_subscriptions_per_user,
            track_windows: self.subscription_windows.max(1),
            stall_timeout: std::time::Duration::from_millis(self.subscriber_timeout_ms.max(1)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Lifetime of the bearer tokens the handshake issues.
    pub token_ttl_secs: u64,
    /// `[auth.users.<name>]` with `password_hash` (from `ohlcv-server hash-password`) and
    /// `role` (`reader`, `writer` or `admin`). No users means no authentication, loopback only.
    pub users: std::collections::BTreeMap<String, UserConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_secs: 3600,
            users: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuildConfig {
    /// Seconds after a window ends during which its trades may still arrive; the bar is
    /// persisted after that and later trades revise it.
    pub grace_secs: u64,
    /// What a build may hold in memory at once (MB). A first build or backfill longer than
    /// that goes in chunks, each committed with how far the build has got.
    pub memory_mb: u64,
    /// Whether a chunk commits while the next one is computed: faster, holds two chunks'
    /// bars at once, and a kill may lose two chunks instead of one. Unset: from a 256 MB
    /// budget up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_commits: Option<bool>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            grace_secs: 300,
            memory_mb: crate::build::DEFAULT_MEMORY_MB,
            overlap_commits: None,
        }
    }
}

impl BuildConfig {
    pub fn settings(&self) -> crate::build::BuildSettings {
        crate::build::BuildSettings {
            grace_us: self.grace_secs as i64 * 1_000_000,
            memory_bytes: self.memory_mb.max(1) << 20,
            overlap_commits: self.overlap_commits,
        }
    }
}

/// `[cluster]`: the servers on one lake.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Flight locations of every server (`grpc+tcp://host:50051`, `grpc+tls://...`) named in
    /// each query's endpoint, rotated per query, so that clients spread their DoGets.
    pub endpoints: Vec<String>,
    /// The Flight location clients and the other servers reach this server at
    /// (`grpc+tcp://ohlcv-1.internal:50051`), when it is not the listen address (a wildcard
    /// listen address, NAT, a load balancer): a read replica's refusal of writes names the
    /// builder by it, and `system.cluster` lists it. Empty: the address the server listens on.
    pub advertise: String,
}

/// `[telemetry]`: the metrics and health endpoint, and the log format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `host:port` of `/metrics`, `/healthz` and `/readyz`; empty turns it off.
    pub listen: String,
    /// `text` (default) or `json` (one object per line, for log shippers).
    pub log_format: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: "127.0.0.1:50052".to_string(),
            log_format: "text".to_string(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            catalog: CatalogConfig::default(),
            build: BuildConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            retention: RetentionConfig::default(),
            alerts: AlertsConfig::default(),
            quality: crate::jobs::ScheduleSettings::default(),
            cache: CacheSection::default(),
            ingest: crate::trades::Limits::default(),
            source: None,
            s3: crate::storage::S3Config::default(),
            telemetry: TelemetryConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Config {
    /// Reads `file` (if any) and applies the `OHLCV_*` variables found in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let table: toml::Table =
                    text.parse()
                        .map_err(|e: toml::de::Error| ConfigError::Invalid {
                            origin: path.display().to_string(),
                            message: e.to_string(),
                        })?;
                (table, path.display().to_string())
            }
            None => (toml::Table::new(), "defaults".to_string()),
        };
        let mut overridden = Vec::new();
        for (name, value) in env {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            set_path(
                &mut table,
                &key.to_ascii_lowercase(),
                parse_env_value(&value),
            );
            overridden.push(name);
        }
        let origin = if overridden.is_empty() {
            origin
        } else {
            format!("{origin} + env {}", overridden.join(", "))
        };
        toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid {
                origin,
                message: e.to_string(),
            })
    }

    /// Absolute data dir, so catalog URLs and table locations never depend on the cwd later.
    pub fn data_dir_abs(&self) -> PathBuf {
        absolute(&self.data_dir)
    }

    /// The settings storage opens the catalog and takes the writer lock with.
    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir_abs(),
            catalog: self.catalog.clone(),
            s3: self.s3.clone(),
            source: self.source.clone(),
        }
    }

    pub fn catalog_url(&self) -> String {
        self.storage().catalog_url()
    }

    /// Where our tables' files go.
    pub fn warehouse(&self) -> Result<crate::storage::Warehouse, crate::storage::Error> {
        self.storage().warehouse()
    }
}

impl From<&Config> for StorageConfig {
    fn from(config: &Config) -> StorageConfig {
        config.storage()
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once("__") {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_data_dir_layout() {
        let cfg = Config::load(None, env(&[])).unwrap();
        assert_eq!(cfg.catalog.name, "ohlcv");
        assert_eq!(cfg.catalog.namespace, "market");
        assert!(cfg.catalog_url().ends_with("/data/catalog.db?mode=rwc"));
        assert!(cfg
            .warehouse()
            .unwrap()
            .location()
            .ends_with("data/warehouse"));
    }

    #[test]
    fn env_overrides_file_and_sections_nest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[catalog]\nnamespace = \"filens\"\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&file),
            env(&[("OHLCV_CATALOG__NAMESPACE", "envns"), ("HOME", "/ignored")]),
        )
        .unwrap();
        assert_eq!(cfg.data_dir, PathBuf::from("/from/file"));
        assert_eq!(cfg.catalog.namespace, "envns");
    }

    #[test]
    fn users_and_roles_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[auth.users.ana]\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA\"\n\
             role = \"writer\"\n[server]\nquery_memory_limit_mb = 64\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&file), env(&[])).unwrap();
        assert_eq!(cfg.auth.users["ana"].role, Role::Writer);
        assert_eq!(cfg.server.query_memory_limit_mb, 64);
        assert_eq!(cfg.auth.token_ttl_secs, 3600);
    }

    #[test]
    fn a_source_table_maps_its_columns_and_ingest_limits_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[source]\nnamespace = \"lake\"\ntable = \"gold_crypto_trades\"\n\
             exchange = \"binance\"\n[source.columns]\nts = \"trade_time\"\nprice = \"px\"\n\
             side = \"is_buyer_maker\"\n[ingest]\nmax_past_days = 30\n\
             [cache]\nmax_candle_windows = 10\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&file), env(&[])).unwrap();
        let source = cfg.source.unwrap();
        assert_eq!(source.table, "gold_crypto_trades");
        assert_eq!(source.columns.ts, "trade_time");
        assert_eq!(
            source.columns.quantity, "quantity",
            "unmapped columns keep our names"
        );
        assert!(!source.strict);
        assert_eq!(cfg.ingest.max_past_days, 30);
        assert_eq!(cfg.ingest.max_key_bytes, 128);
        assert_eq!(cfg.cache.settings().unwrap().max_windows, 10);
        assert!(Config::load(None, env(&[])).unwrap().source.is_none());
    }

    #[test]
    fn unknown_keys_are_refused_with_their_origin() {
        let err = Config::load(None, env(&[("OHLCV_NO_SUCH_KEY", "1")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("OHLCV_NO_SUCH_KEY"), "{msg}");
        assert!(msg.contains("no_such_key"), "{msg}");
    }

    #[test]
    fn cache_section_defaults_are_the_cache_defaults() {
        let section = CacheSection::default();
        assert_eq!(
            section.settings().unwrap(),
            crate::candles::cache::CacheConfig::default()
        );
        assert_eq!(section.horizon_hours["1m"], 48);
        assert_eq!(section.horizon_hours["1d"], 0);
        let mut bad = section;
        bad.horizon_hours.insert("7x".into(), 1);
        assert!(bad.settings().is_err());
    }
}

/// What a user may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Queries and metadata.
    Reader,
    /// Also ingest into `market.trades`.
    Writer,
    /// Also the admin service.
    Admin,
}

/// A configured user (`[auth.users.<name>]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// PHC string from `ohlcv-server hash-password`.
    pub password_hash: String,
    pub role: Role,
}
