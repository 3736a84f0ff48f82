//! The connection to the `redis` section's server, shared by every plugin
//! that keeps state across gateway nodes (phantom tokens, HMAC nonces,
//! rate-limit counts).
//!
//! A single server (`url`): `pool_size` multiplexed connections, used in
//! turn; each reconnects by itself after Redis comes back. A Redis Cluster
//! (`cluster.nodes`): one cluster connection, which learns the slot map from
//! the nodes given, multiplexes a connection per node and follows
//! `MOVED`/`ASK` redirections. Every command, pipeline and script the
//! gateway sends touches one hash slot (keys share a `{tag}`), as a cluster
//! requires. Every command is bounded by `redis.timeout`: a slow or absent
//! Redis is an error the caller turns into an answer (the auth plugins fail
//! closed), never a hung request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value};
use tokio::sync::OnceCell;

use crate::config::RedisConfig;

pub struct Redis {
    /// The settings this client was made with (a reload with the same ones keeps it).
    pub settings: RedisConfig,
    target: Target,
    timeout: Duration,
}

enum Target {
    Single {
        client: redis::Client,
        conns: Vec<OnceCell<ConnectionManager>>,
        next: AtomicUsize,
    },
    /// Connected on first use, and again on the next use after a failure.
    Cluster {
        /// Boxed: the client is large, and there is one per config.
        client: Box<ClusterClient>,
        conn: OnceCell<ClusterConnection>,
    },
}

/// A connection to a single server or to the cluster.
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Redis {
    /// Checks the settings; connects on first use.
    pub fn new(cfg: &RedisConfig) -> Result<Redis, (String, String)> {
        if cfg.pool_size == 0 {
            return Err(("pool_size".into(), "must be at least 1".into()));
        }
        let timeout = cfg.timeout.0;
        let target = match (&cfg.url, &cfg.cluster) {
            (Some(_), Some(_)) => {
                return Err((
                    "cluster".into(),
                    "give either `url` or `cluster`, not both".into(),
                ));
            }
            (None, None) => return Err(("url".into(), "is required (or `cluster.nodes`)".into())),
            (Some(url), None) => Target::Single {
                client: redis::Client::open(url.as_str())
                    .map_err(|e| ("url".to_string(), format!("not a Redis URL: {e}")))?,
                conns: (0..cfg.pool_size.min(256)).map(|_| OnceCell::new()).collect(),
                next: AtomicUsize::new(0),
            },
            (None, Some(cluster)) => {
                if cluster.nodes.is_empty() {
                    return Err(("cluster.nodes".into(), "at least one node is needed".into()));
                }
                for (i, node) in cluster.nodes.iter().enumerate() {
                    redis::Client::open(node.as_str()).map_err(|e| {
                        (
                            format!("cluster.nodes[{i}]"),
                            format!("not a Redis URL (redis://host:port): {e}"),
                        )
                    })?;
                }
                let client = ClusterClient::builder(cluster.nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| ("cluster.nodes".to_string(), e.to_string()))?;
                Target::Cluster {
                    client: Box::new(client),
                    conn: OnceCell::new(),
                }
            }
        };
        Ok(Redis {
            settings: cfg.clone(),
            target,
            timeout,
        })
    }

    async fn conn(&self) -> Result<Conn, String> {
        match &self.target {
            Target::Single { client, conns, next } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % conns.len();
                conns[i]
                    .get_or_try_init(|| async {
                        let cfg = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(self.timeout))
                            .set_response_timeout(Some(self.timeout))
                            .set_number_of_retries(1);
                        ConnectionManager::new_lazy_with_config(client.clone(), cfg)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .cloned()
                    .map(Conn::Single)
            }
            Target::Cluster { client, conn } => conn
                .get_or_try_init(|| async { client.get_async_connection().await.map_err(|e| e.to_string()) })
                .await
                .cloned()
                .map(Conn::Cluster),
        }
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
