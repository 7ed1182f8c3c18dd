//! Authentication and roles: the Flight handshake trades a username and password (argon2 hashes
//! in the config) for an expiring bearer token; a tower layer checks the token on every other
//! call and hands the caller's [`Identity`] to the services, which check roles.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::error::Error;

use crate::clock::Clock;

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

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub role: Role,
}

impl Identity {
    /// `PermissionDenied` unless the caller has at least `role`.
    pub fn require(&self, role: Role, action: &str) -> Result<(), Error> {
        if self.role >= role {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "user '{}' has role {:?}; {action} needs {:?}",
                self.user, self.role, role
            )))
        }
    }

    /// The identity a request carries (set by [`AuthLayer`]).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Identity, Error> {
        request
            .extensions()
            .get::<Identity>()
            .cloned()
            .ok_or_else(|| Error::unauthenticated("no identity on the request"))
    }
}

/// Hashes a password for the config file (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

struct Session {
    identity: Identity,
    expires_us: i64,
}

/// Users, and the tokens handed out to them.
pub struct Auth {
    users: BTreeMap<String, UserConfig>,
    ttl_us: i64,
    clock: Arc<dyn Clock>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Auth {
    pub fn new(
        users: BTreeMap<String, UserConfig>,
        token_ttl_secs: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<Auth, String> {
        for (name, user) in &users {
            PasswordHash::new(&user.password_hash)
                .map_err(|e| format!("user '{name}': password_hash is not a PHC string: {e}"))?;
        }
        Ok(Auth {
            users,
            ttl_us: token_ttl_secs as i64 * 1_000_000,
            clock,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Without users every caller is an anonymous admin (the server then only binds loopback
    /// unless told `--insecure`).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks `Basic` credentials and issues a bearer token.
    pub fn login(&self, authorization: Option<&str>) -> Result<String, Error> {
        let (user, password) = authorization
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
            .ok_or_else(|| {
                Error::unauthenticated("handshake needs an 'authorization: Basic' header")
            })?;
        let denied = || Error::unauthenticated("unknown user or wrong password");
        let config = self.users.get(&user).ok_or_else(denied)?;
        let hash = PasswordHash::new(&config.password_hash).map_err(|_| denied())?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| denied())?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = self.clock.now_us();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, s| s.expires_us > now);
        sessions.insert(
            token.clone(),
            Session {
                identity: Identity {
                    user,
                    role: config.role,
                },
                expires_us: now + self.ttl_us,
            },
        );
        Ok(token)
    }

    /// The identity behind an `authorization: Bearer` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Identity, Error> {
        if !self.enabled() {
            return Ok(Identity {
                user: "anonymous".into(),
                role: Role::Admin,
            });
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Error::unauthenticated(
                    "missing bearer token: authenticate with the Flight handshake first",
                )
            })?;
        let sessions = self.sessions.lock().expect("sessions lock");
        match sessions.get(token) {
            Some(s) if s.expires_us > self.clock.now_us() => Ok(s.identity.clone()),
            Some(_) => Err(Error::unauthenticated("token expired: authenticate again")),
            None => Err(Error::unauthenticated("unknown token")),
        }
    }
}

/// Paths that need no token: the handshake itself and health probes.
fn is_open(path: &str) -> bool {
    path == "/arrow.flight.protocol.FlightService/Handshake"
        || path.starts_with("/grpc.health.v1.Health/")
}

/// Tower layer checking tokens before any service sees a request.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Auth>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Auth>) -> AuthLayer {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S, B, R> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        futures::future::Ready<Result<http::Response<R>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if is_open(request.uri().path()) {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.authenticate(header) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => futures::future::Either::Right(futures::future::ready(Ok(
                tonic::Status::from(status).into_http(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn basic(user: &str, password: &str) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b}")
    }

    #[test]
    fn tokens_carry_the_role_and_expire() {
        let clock = Arc::new(ManualClock::at(0));
        let users = BTreeMap::from([(
            "ana".to_string(),
            UserConfig {
                password_hash: hash_password("s3cret").unwrap(),
                role: Role::Writer,
            },
        )]);
        let auth = Auth::new(users, 60, clock.clone()).unwrap();
        assert!(auth.login(Some(&basic("ana", "wrong"))).is_err());
        assert!(auth.login(Some(&basic("bob", "s3cret"))).is_err());
        let token = auth.login(Some(&basic("ana", "s3cret"))).unwrap();
        let id = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(id.role, Role::Writer);
        assert!(id.require(Role::Writer, "ingest").is_ok());
        assert_eq!(
            tonic::Status::from(id.require(Role::Admin, "admin").unwrap_err()).code(),
            tonic::Code::PermissionDenied
        );
        clock.set(61_000_000);
        let err = tonic::Status::from(
            auth.authenticate(Some(&format!("Bearer {token}")))
                .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("expired"));
    }
}
