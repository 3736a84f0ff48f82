//! The connection to the `redis` section's server, shared by every plugin
//! that keeps state across gateway nodes (phantom tokens, HMAC nonces).
//!
//! `pool_size` multiplexed connections, used in turn; each reconnects by
//! itself after Redis comes back. Every command is bounded by
//! `redis.timeout`: a slow or absent Redis is an error the caller turns into
//! an answer (the auth plugins fail closed), never a hung request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Pipeline, ScriptInvocation};
use tokio::sync::OnceCell;

use crate::config::RedisConfig;

pub struct Redis {
    /// The settings this client was made with (a reload with the same ones keeps it).
    pub settings: RedisConfig,
    client: redis::Client,
    conns: Vec<OnceCell<ConnectionManager>>,
    next: AtomicUsize,
    timeout: Duration,
}

impl Redis {
    /// Checks the settings; connects on first use.
    pub fn new(cfg: &RedisConfig) -> Result<Redis, (&'static str, String)> {
        if cfg.cluster.is_some() {
            return Err(("cluster", "Redis Cluster is not supported yet; use `url`".into()));
        }
        let url = cfg.url.as_deref().ok_or(("url", "is required".to_string()))?;
        let client = redis::Client::open(url).map_err(|e| ("url", format!("not a Redis URL: {e}")))?;
        if cfg.pool_size == 0 {
            return Err(("pool_size", "must be at least 1".into()));
        }
        Ok(Redis {
            settings: cfg.clone(),
            client,
            conns: (0..cfg.pool_size.min(256)).map(|_| OnceCell::new()).collect(),
            next: AtomicUsize::new(0),
            timeout: cfg.timeout.0,
        })
    }

    async fn conn(&self) -> Result<ConnectionManager, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        let cell = &self.conns[i];
        cell.get_or_try_init(|| async {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_lazy_with_config(self.client.clone(), cfg).map_err(|e| e.to_string())
        })
        .await
        .cloned()
    }

    /// Runs `pipe` (one round trip) within `redis.timeout`.
    pub async fn query<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, String> {
        let run = async {
            let mut conn = self.conn().await?;
            pipe.query_async::<T>(&mut conn).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Runs a Lua script (`EVALSHA`, loading it on `NOSCRIPT`): one atomic
    /// step on the server, within `redis.timeout`.
    pub async fn script<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> Result<T, String> {
        let run = async {
            let mut conn = self.conn().await?;
            invocation
                .invoke_async::<T>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    /// Whether Redis answers a `PING` (readiness).
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.query::<(String,)>(&pipe).await.is_ok()
    }
}
