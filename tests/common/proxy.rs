//! A TCP proxy between the server and PostgreSQL that the test controls: it passes everything
//! through until armed with a fault, which fires once on the first client message that holds
//! a pattern (for example the catalog's `update iceberg_tables`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the proxy does to the first client message containing the pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward it, let the database execute it, then swallow the reply that reports the
    /// update done and close the connection: the client cannot know whether it applied.
    DropReply(String),
    /// Close the connection instead of forwarding it: the statement never reaches the database.
    ResetBefore(String),
}

#[derive(Default)]
struct State {
    armed: Mutex<Option<Fault>>,
    fired: AtomicUsize,
    /// Set by [`Proxy::cut`]: every open connection is closed.
    cut: AtomicBool,
    /// Numbers the connections in the order they were accepted.
    accepted: AtomicUsize,
    /// Set by [`Proxy::freeze`]: connections up to this number whose opening messages hold
    /// the pattern go silent.
    frozen: Mutex<Option<(String, usize)>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    _tasks: JoinSet<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let mut tasks = JoinSet::new();
        let shared = Arc::clone(&state);
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                let id = state.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(id, client, server, state).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            state,
            _tasks: tasks,
        }
    }

    pub fn arm(&self, fault: Fault) {
        *self.state.armed.lock().unwrap() = Some(fault);
    }

    /// How many faults have fired.
    pub fn fired(&self) -> usize {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// Closes every connection open now (as a database restart or a network cut would).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
    }

    /// A network partition that resets nothing: every connection open now whose opening
    /// messages (PostgreSQL's startup packet: user, database, `application_name`) hold
    /// `pattern` stops forwarding in both directions but stays open, so neither end learns
    /// it is gone. Later connections pass.
    pub fn freeze(&self, pattern: &str) {
        let upto = self.state.accepted.load(Ordering::SeqCst);
        *self.state.frozen.lock().unwrap() = Some((pattern.to_string(), upto));
    }

    /// Lets new connections through again after [`Proxy::cut`].
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

async fn relay(id: usize, mut client: TcpStream, mut server: TcpStream, state: Arc<State>) {
    let mut swallow = false;
    // The first client messages (an SSL request, then the startup packet).
    let mut opening = Vec::new();
    let mut from_client = vec![0u8; 64 * 1024];
    let mut from_server = vec![0u8; 64 * 1024];
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    loop {
        tokio::select! {
            n = client.read(&mut from_client) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                let chunk = &from_client[..n];
                if opening.len() < 4096 {
                    opening.extend_from_slice(chunk);
                }
                let fault = {
                    let mut armed = state.armed.lock().unwrap();
                    let hit = armed.as_ref().is_some_and(|f| contains(chunk, pattern(f)));
                    if hit { armed.take() } else { None }
                };
                match fault {
                    Some(Fault::ResetBefore(_)) => {
                        state.fired.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Some(Fault::DropReply(_)) => {
                        state.fired.fetch_add(1, Ordering::SeqCst);
                        swallow = true;
                    }
                    None => {}
                }
                if server.write_all(chunk).await.is_err() { return; }
            }
            n = server.read(&mut from_server) => {
                let Ok(n) = n else { return };
                if n == 0 { return; }
                // The statement may be prepared in a round trip of its own: swallow the reply
                // that reports it executed (PostgreSQL's `UPDATE <rows>` command tag).
                if swallow && contains(&from_server[..n], "UPDATE ") { return; }
                if client.write_all(&from_server[..n]).await.is_err() { return; }
            }
            _ = tick.tick() => {
                if state.cut.load(Ordering::SeqCst) { return; }
                let frozen = state.frozen.lock().unwrap().clone();
                if let Some((pattern, upto)) = frozen {
                    if id <= upto && contains(&opening, &pattern) {
                        // Both sockets stay open, forwarding nothing, until the proxy goes.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

fn pattern(fault: &Fault) -> &str {
    match fault {
        Fault::DropReply(p) | Fault::ResetBefore(p) => p,
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.to_ascii_lowercase();
    haystack
        .to_ascii_lowercase()
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
