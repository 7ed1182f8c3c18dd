//! Authentication and roles: the Flight handshake trades a username and password (argon2 hashes
//! in the config) for an expiring bearer token; a tower layer checks the token on every other
//! call and hands the caller's [`Identity`] to the services, which check roles.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use base64::alphabet;
use base64::engine::general_purpose::GeneralPurposeConfig;
use base64::engine::{DecodePaddingMode, GeneralPurpose};
use base64::Engine;
use rand::RngCore;

use crate::clock::Clock;

pub use crate::config::{Role, UserConfig};

/// Why a request is refused. Mapped to gRPC codes with every other error in
/// `server::error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl Error {
    pub fn unauthenticated(message: impl Into<String>) -> Error {
        Error::Unauthenticated(message.into())
    }
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
    /// Verified against when the user is unknown, so that costs what a wrong password costs.
    dummy_hash: String,
    throttle: Throttle,
}

/// Base64 as RFC 7617 wants it, and without the padding some clients leave out.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Failed logins allowed per key before backing off.
const FREE_FAILURES: u32 = 3;
/// Longest back-off after failed logins.
const MAX_BACKOFF_US: i64 = 60_000_000;
/// Most keys remembered; the oldest are forgotten past it, so guessing cannot grow memory.
const MAX_THROTTLED: usize = 10_000;

/// Back-off after failed logins, per key (`user:<name>` and `addr:<ip>`): after
/// [`FREE_FAILURES`] failures a key waits 1 s, doubling with each further failure up to a
/// minute. A successful login clears its keys.
#[derive(Default)]
struct Throttle {
    keys: Mutex<HashMap<String, (u32, i64)>>,
}

impl Throttle {
    /// How long the caller must still wait, if any of its keys is backing off.
    fn wait(&self, keys: &[String], now_us: i64) -> Option<i64> {
        let map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| map.get(k))
            .map(|(_, until)| until - now_us)
            .filter(|w| *w > 0)
            .max()
    }

    fn failed(&self, keys: &[String], now_us: i64) {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_THROTTLED {
            let horizon = now_us - MAX_BACKOFF_US;
            map.retain(|_, (_, until)| *until > horizon);
            if map.len() >= MAX_THROTTLED {
                map.clear();
            }
        }
        for key in keys.iter().filter(|k| !k.is_empty()) {
            let (failures, until) = map.entry(key.clone()).or_insert((0, 0));
            *failures += 1;
            if *failures >= FREE_FAILURES {
                let shift = (*failures - FREE_FAILURES).min(6);
                *until = now_us + (1_000_000i64 << shift).min(MAX_BACKOFF_US);
            }
        }
    }

    fn succeeded(&self, keys: &[String]) {
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.remove(key);
        }
    }
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
        let dummy_hash = if users.is_empty() {
            String::new()
        } else {
            let mut bytes = [0u8; 16];
            rand::thread_rng().fill_bytes(&mut bytes);
            hash_password(&base64::engine::general_purpose::STANDARD.encode(bytes))?
        };
        Ok(Auth {
            users,
            ttl_us: token_ttl_secs as i64 * 1_000_000,
            clock,
            sessions: Mutex::new(HashMap::new()),
            dummy_hash,
            throttle: Throttle::default(),
        })
    }

    /// Without users every caller is an anonymous admin (the server then only binds loopback
    /// unless told `--insecure`).
    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// Checks `Basic` credentials from `address` and issues a bearer token.
    ///
    /// An unknown user costs the same argon2 verification as a wrong password (against a hash
    /// made at start), so timing does not tell which users exist. Failed logins back off per
    /// user and address together ([`Throttle`]): one user's typos, or a guesser behind the same
    /// NAT or proxy, lock out no one else.
    pub fn login(
        &self,
        authorization: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<String, Error> {
        let identity = self.verify(authorization, address)?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = self.clock.now_us();
        let mut sessions = self.sessions.lock().expect("sessions lock");
        sessions.retain(|_, s| s.expires_us > now);
        sessions.insert(
            token.clone(),
            Session {
                identity,
                expires_us: now + self.ttl_us,
            },
        );
        Ok(token)
    }

    /// Checks `Basic` credentials from `address` (with the same back-off and constant-time
    /// failure as the handshake) and names who they belong to, without issuing a token: the
    /// status page asks on every request, as browsers do.
    pub fn verify(
        &self,
        authorization: Option<&str>,
        address: Option<IpAddr>,
    ) -> Result<Identity, Error> {
        let (user, password) = authorization
            .and_then(|h| h.strip_prefix("Basic "))
            // RFC 7617 pads; the Go ADBC driver does not.
            .and_then(|b| BASIC.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
            .ok_or_else(|| {
                Error::unauthenticated("handshake needs an 'authorization: Basic' header")
            })?;
        let now = self.clock.now_us();
        let keys = [match address {
            Some(a) => format!("user:{user} addr:{a}"),
            None => format!("user:{user}"),
        }];
        if let Some(wait_us) = self.throttle.wait(&keys, now) {
            return Err(Error::unauthenticated(format!(
                "too many failed logins: retry in {} s",
                (wait_us + 999_999) / 1_000_000
            )));
        }
        let config = self.users.get(&user);
        let hash = config.map_or(self.dummy_hash.as_str(), |c| c.password_hash.as_str());
        let verified = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        let config = match config {
            Some(c) if verified => c,
            _ => {
                self.throttle.failed(&keys, now);
                return Err(Error::unauthenticated("unknown user or wrong password"));
            }
        };
        self.throttle.succeeded(&keys);
        Ok(Identity {
            user,
            role: config.role,
        })
    }

    /// Forgets the tokens of `user` (of everyone when `None`); returns how many went.
    pub fn revoke(&self, user: Option<&str>) -> usize {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let before = sessions.len();
        sessions.retain(|_, s| user.is_some_and(|u| s.identity.user != u));
        before - sessions.len()
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
                tracing::Span::current().record("user", identity.user.as_str());
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
    fn revoked_tokens_are_refused_and_others_kept() {
        let users = ["ana", "bob"].map(|name| {
            (
                name.to_string(),
                UserConfig {
                    password_hash: hash_password("s3cret").unwrap(),
                    role: Role::Reader,
                },
            )
        });
        let auth = Auth::new(BTreeMap::from(users), 60, Arc::new(ManualClock::at(0))).unwrap();
        let ana = auth.login(Some(&basic("ana", "s3cret")), None).unwrap();
        let bob = auth.login(Some(&basic("bob", "s3cret")), None).unwrap();
        assert_eq!(auth.revoke(Some("ana")), 1);
        let err = auth
            .authenticate(Some(&format!("Bearer {ana}")))
            .unwrap_err();
        assert!(err.to_string().contains("unknown token"), "{err}");
        auth.authenticate(Some(&format!("Bearer {bob}"))).unwrap();
        assert_eq!(auth.revoke(None), 1);
        assert!(auth.authenticate(Some(&format!("Bearer {bob}"))).is_err());
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
        assert!(auth.login(Some(&basic("ana", "wrong")), None).is_err());
        assert!(auth.login(Some(&basic("bob", "s3cret")), None).is_err());
        let token = auth.login(Some(&basic("ana", "s3cret")), None).unwrap();
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

    fn one_user(password: &str, clock: Arc<ManualClock>) -> Auth {
        let users = BTreeMap::from([(
            "ana".to_string(),
            UserConfig {
                password_hash: hash_password(password).unwrap(),
                role: Role::Reader,
            },
        )]);
        Auth::new(users, 60, clock).unwrap()
    }

    #[test]
    fn basic_credentials_decode_with_and_without_padding() {
        // "ana:" plus 1, 2 and 3 characters: every length modulo 3.
        for password in ["p", "pw", "pwd"] {
            let auth = one_user(password, Arc::new(ManualClock::at(0)));
            let padded = basic("ana", password);
            let unpadded = padded.trim_end_matches('=').to_string();
            assert!(auth.login(Some(&padded), None).is_ok(), "{padded}");
            assert!(auth.login(Some(&unpadded), None).is_ok(), "{unpadded}");
        }
    }

    #[test]
    fn failed_logins_back_off_per_user_and_address_and_lock_out_no_one_else() {
        let clock = Arc::new(ManualClock::at(0));
        let users = [("ana", "right"), ("bo", "bos")].map(|(name, password)| {
            let config = UserConfig {
                password_hash: hash_password(password).unwrap(),
                role: Role::Reader,
            };
            (name.to_string(), config)
        });
        let auth = Auth::new(BTreeMap::from(users), 60, clock.clone()).unwrap();
        let here: Option<IpAddr> = Some([10, 0, 0, 1].into());
        let elsewhere: Option<IpAddr> = Some([10, 0, 0, 2].into());
        for _ in 0..FREE_FAILURES {
            let err = auth.login(Some(&basic("ana", "wrong")), here).unwrap_err();
            assert!(tonic::Status::from(err)
                .message()
                .contains("wrong password"));
        }
        // Backing off: even the right password waits, for this user from this address.
        let err = auth.login(Some(&basic("ana", "right")), here).unwrap_err();
        assert!(tonic::Status::from(err).message().contains("retry in 1 s"));
        // No one else waits: another user behind the same address, the same user elsewhere.
        assert!(auth.login(Some(&basic("bo", "bos")), here).is_ok());
        assert!(auth.login(Some(&basic("ana", "right")), elsewhere).is_ok());
        clock.set(1_000_001);
        assert!(auth.login(Some(&basic("ana", "right")), here).is_ok());
        // A success clears the key: the next failure is free again.
        let err = auth.login(Some(&basic("ana", "wrong")), here).unwrap_err();
        assert!(tonic::Status::from(err)
            .message()
            .contains("wrong password"));
    }
}
