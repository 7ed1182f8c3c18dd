//! The Iceberg REST catalog: the client, its authentication (bearer token, OAuth2 client
//! credentials, SigV4 signing) and the one read the crate's `Catalog` does not expose (where a
//! table's current metadata file is).

use std::sync::Arc;
use std::time::Duration;

use iceberg_rest_catalog::apis::configuration::{AWSv4Key, Configuration};
use iceberg_rest_catalog::apis::{catalog_api_api, configuration_api_api};
use iceberg_rest_catalog::catalog::RestCatalog;
use iceberg_rest_catalog::configuration_rewriter::ConfigurationRewriter;
use iceberg_rest_catalog::oauth2_client_credentials::OAuth2ClientCredentials;
use iceberg_rust::object_store::ObjectStoreBuilder;
use iceberg_rust::spec::identifier::Identifier;
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

/// Longest one request to the REST catalog may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `[catalog.rest]`: how to reach an Iceberg REST catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestConfig {
    /// Base URL, e.g. `http://127.0.0.1:8181` (the `/v1/...` paths are appended).
    pub uri: String,
    /// Warehouse identifier sent to `GET /v1/config` (e.g. `s3://warehouse`).
    pub warehouse: Option<String>,
    /// A bearer token sent as is.
    pub token: Option<String>,
    /// OAuth2 client credentials, `client_id:client_secret`, exchanged at
    /// `oauth2_server_uri` (default `<uri>/v1/oauth/tokens`).
    pub credential: Option<String>,
    pub oauth2_server_uri: Option<String>,
    pub scope: Option<String>,
    /// Sign every request with AWS SigV4 (S3 Tables, SeaweedFS, Glue); the keys come from
    /// `[s3]` or the `AWS_*` variables.
    pub sigv4: bool,
    pub signing_region: Option<String>,
    /// SigV4 service name: `s3tables` for S3 Tables and SeaweedFS, `glue` for Glue.
    pub signing_name: Option<String>,
}

/// A connected REST catalog.
#[derive(Debug, Clone)]
pub struct Rest {
    configuration: Configuration,
    rewriter: Option<Arc<dyn ConfigurationRewriter>>,
    /// Path prefix the catalog asked for in its config (`overrides.prefix`).
    prefix: Option<String>,
}

impl Rest {
    /// Authenticates and asks the catalog for its settings.
    pub async fn connect(config: &RestConfig, s3: &super::S3Config) -> Result<Rest> {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Catalog(format!("REST client: {e}")))?;
        let uri = config.uri.trim_end_matches('/').to_string();
        let mut configuration = Configuration {
            base_path: uri.clone(),
            user_agent: Some(format!("ohlcv-server/{}", env!("CARGO_PKG_VERSION"))),
            client,
            bearer_access_token: config.token.clone(),
            ..Configuration::default()
        };
        if config.sigv4 {
            let env = |name: &str| std::env::var(name).ok();
            let access_key = s3
                .access_key_id
                .clone()
                .or_else(|| env("AWS_ACCESS_KEY_ID"))
                .ok_or_else(|| {
                    Error::Catalog(
                        "catalog.rest.sigv4 needs s3.access_key_id or AWS_ACCESS_KEY_ID".into(),
                    )
                })?;
            let secret = s3
                .secret_access_key
                .clone()
                .or_else(|| env("AWS_SECRET_ACCESS_KEY"))
                .ok_or_else(|| {
                    Error::Catalog(
                        "catalog.rest.sigv4 needs s3.secret_access_key or AWS_SECRET_ACCESS_KEY"
                            .into(),
                    )
                })?;
            configuration.aws_v4_key = Some(AWSv4Key {
                access_key,
                secret_key: secret.into(),
                session_token: s3
                    .session_token
                    .clone()
                    .or_else(|| env("AWS_SESSION_TOKEN"))
                    .map(Into::into),
                region: config
                    .signing_region
                    .clone()
                    .or_else(|| s3.region.clone())
                    .or_else(|| env("AWS_REGION"))
                    .unwrap_or_else(|| "us-east-1".to_string()),
                service: config
                    .signing_name
                    .clone()
                    .unwrap_or_else(|| "execute-api".to_string()),
            });
        }
        let rewriter = match &config.credential {
            None => None,
            Some(credential) => {
                let (id, secret) = credential.split_once(':').ok_or_else(|| {
                    Error::Catalog("catalog.rest.credential must be client_id:client_secret".into())
                })?;
                let server = config
                    .oauth2_server_uri
                    .clone()
                    .unwrap_or_else(|| format!("{uri}/v1/oauth/tokens"));
                Some(Arc::new(OAuth2ClientCredentials::new(
                    server,
                    id.to_string(),
                    secret.to_string(),
                    None,
                    config.scope.clone(),
                )) as Arc<dyn ConfigurationRewriter>)
            }
        };
        let mut rest = Rest {
            configuration,
            rewriter,
            prefix: None,
        };
        let settings = configuration_api_api::get_config(
            &rest.configuration().await?,
            config.warehouse.as_deref(),
        )
        .await
        .map_err(|e| Error::Catalog(format!("REST catalog {uri}: GET /v1/config: {e}")))?;
        rest.prefix = settings
            .overrides
            .get("prefix")
            .or_else(|| settings.defaults.get("prefix"))
            .cloned();
        Ok(rest)
    }

    async fn configuration(&self) -> Result<Configuration> {
        match &self.rewriter {
            None => Ok(self.configuration.clone()),
            Some(rewriter) => Ok(rewriter
                .rewrite_configuration(self.configuration.clone())
                .await?),
        }
    }

    /// The crate's catalog over this connection; files are reached through `store`.
    pub fn catalog(&self, store: ObjectStoreBuilder) -> RestCatalog {
        RestCatalog::new(
            self.prefix.as_deref(),
            self.configuration.clone(),
            self.rewriter.clone(),
            Some(store),
            // Vended credentials would give each table its own store; ours reaches them all.
            true,
        )
    }

    /// The metadata file the catalog currently points `identifier` at.
    pub async fn metadata_location(&self, identifier: &Identifier) -> Result<String> {
        let reply = catalog_api_api::load_table(
            &self.configuration().await?,
            self.prefix.as_deref(),
            &identifier.namespace().to_string(),
            identifier.name(),
            None,
            None,
        )
        .await
        .map_err(|e| Error::Catalog(format!("REST catalog: load {identifier}: {e}")))?;
        reply.metadata_location.ok_or_else(|| {
            Error::Catalog(format!(
                "REST catalog names no metadata file for {identifier}"
            ))
        })
    }
}
