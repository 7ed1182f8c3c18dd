//! A running Flight SQL server on 127.0.0.1:0 over a test deployment, and a deployment with
//! bars built, for the server and client tests.

use std::collections::HashMap;

use ohlcv_server::build::{self, BuildSettings};
use ohlcv_server::server::{self, QueryEngine};
use ohlcv_server::storage::TableKind;
use ohlcv_server::timeframe::Timeframe;
use tonic::transport::Channel;

use super::trades::{trade, trade_batch};
use super::{Deployment, DAY, T0};

pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub async fn start(d: &Deployment) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let engine = QueryEngine::new(d.storage().clone());
        let task = tokio::spawn(async move {
            server::run(listener, engine, async {
                let _ = rx.await;
            })
            .await
            .unwrap()
        });
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn shutdown_and_wait(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

/// Two hours of 1 trade / 30 s for kraken BTC-USD, built into all five tables (60 1m bars).
pub async fn deployment_with_bars() -> Deployment {
    let d = Deployment::new().await;
    let trades: Vec<_> = (0..120)
        .map(|i| {
            trade(
                "kraken",
                "BTC-USD",
                &i.to_string(),
                T0 + i * 30_000_000,
                100.0 + i as f64,
                1.0,
            )
        })
        .collect();
    let rows = ohlcv_server::trades::normalize(&trade_batch(&trades), 0, T0).unwrap();
    d.writer
        .append(TableKind::Trades, &[rows], HashMap::new())
        .await
        .unwrap();
    for tf in Timeframe::ALL {
        build::build(&d.writer, tf, T0 + 2 * DAY, BuildSettings::default())
            .await
            .unwrap();
    }
    d
}
