//! `rate_limit`: one policy or several, each counting requests per key
//! (any mix of consumer, client IP, route, a header, or one global count)
//! with one of five algorithms (SPEC sections 3 and 8):
//!
//! - token bucket: `burst` tokens, refilled at `rate`; a request takes one;
//! - leaky bucket: a queue of at most `burst` waiting requests, released at
//!   `rate` (requests are delayed, not refused, while the queue has room);
//! - fixed window: `limit` per `window`, windows aligned to the clock (UTC);
//! - sliding window log: `limit` in any `window`-long span, one timestamp kept
//!   per counted request;
//! - sliding window counter: the fixed-window count blended with the
//!   previous window's, weighted by how much of it the sliding span covers.
//!
//! Only requests let through count. With several policies a request must
//! pass each, checked in order (one that passes counts even if a later one
//! refuses). The `RateLimit-*` headers describe the policy closest to its
//! limit; a refusal is 429 with `Retry-After`.
//!
//! With `store: local` the counts live in this process: sharded maps keyed
//! by a keyed hash of the request's key, so building a key allocates
//! nothing; a shard past its share of [`MAX_KEYS`] first drops keys at rest
//! (their state is that of a new key), so memory stays bounded. With
//! `store: redis` they live in Redis, shared by every node: one Lua script
//! run per decision (`rate_limit.lua`). When Redis fails, `on_store_error`
//! decides: `allow` (the default) lets the request through, `deny` answers
//! 503; both are logged and counted.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, request};
use sha2::{Digest, Sha256};

use super::{Carried, RequestCtx};
use crate::config::{OnStoreError, RateLimitAlgorithm, RateLimitPolicy, Store};
use crate::error::GatewayError;
use crate::redis_client::Redis;

/// Keys tracked per policy at most.
const MAX_KEYS: usize = 1 << 20;
const SHARDS: usize = 64;

/// What the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the quota is whole again.
    pub reset: u64,
}

/// A policy's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on, after waiting this long (leaky bucket; zero otherwise).
    Allow { quota: Quota, wait: Duration },
    /// 429; `retry_after` in seconds.
    Deny { quota: Quota, retry_after: u64 },
}

/// One algorithm's parameters, in microseconds where time is involved.
#[derive(Debug, Clone, Copy)]
pub enum Algorithm {
    TokenBucket { burst: u64, interval: u64 },
    LeakyBucket { burst: u64, interval: u64 },
    FixedWindow { limit: u64, window: u64 },
    SlidingLog { limit: u64, window: u64 },
    SlidingCounter { limit: u64, window: u64 },
}

/// The state of one key.
#[derive(Debug, Clone, Default)]
pub enum State {
    #[default]
    Fresh,
    /// Token bucket: when the bucket is full again (µs); leaky bucket: when
    /// the queue is empty again (the GCRA "theoretical arrival time").
    Tat(u64),
    /// Fixed and sliding counter windows: the window's start and count, and
    /// the previous window's count.
    Window { start: u64, count: u64, previous: u64 },
    /// Sliding log: timestamps of counted requests, oldest first.
    Log(std::collections::VecDeque<u64>),
}

fn secs_ceil(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

impl Algorithm {
    pub fn limit(&self) -> u64 {
        match *self {
            Algorithm::TokenBucket { burst, .. } | Algorithm::LeakyBucket { burst, .. } => burst,
            Algorithm::FixedWindow { limit, .. }
            | Algorithm::SlidingLog { limit, .. }
            | Algorithm::SlidingCounter { limit, .. } => limit,
        }
    }

    /// How long a key's state matters after it was last used: past this it
    /// is the same as a fresh key.
    fn memory(&self) -> u64 {
        match *self {
            Algorithm::TokenBucket { burst, interval } | Algorithm::LeakyBucket { burst, interval } => {
                burst.saturating_mul(interval)
            }
            Algorithm::FixedWindow { window, .. } | Algorithm::SlidingLog { window, .. } => window,
            Algorithm::SlidingCounter { window, .. } => 2 * window,
        }
    }

    /// Decides one request at `now` (µs since the Unix epoch) and updates `state`.
    pub fn decide(&self, state: &mut State, now: u64) -> Decision {
        match *self {
            Algorithm::TokenBucket { burst, interval } => {
                // GCRA: the bucket is full at `tat`; each token is `interval`.
                let tat = match state {
                    State::Tat(t) => (*t).max(now),
                    _ => now,
                };
                let capacity = burst * interval;
                let new_tat = tat + interval;
                if new_tat - now > capacity {
                    let quota = Quota {
                        limit: burst,
                        remaining: 0,
                        reset: secs_ceil(tat - now),
                    };
                    let retry = new_tat - now - capacity;
                    return Decision::Deny {
                        quota,
                        retry_after: secs_ceil(retry).max(1),
                    };
                }
                *state = State::Tat(new_tat);
                let used = (new_tat - now).div_ceil(interval);
                Decision::Allow {
                    quota: Quota {
                        limit: burst,
                        remaining: burst.saturating_sub(used),
                        reset: secs_ceil(new_tat - now),
                    },
                    wait: Duration::ZERO,
                }
            }
            Algorithm::LeakyBucket { burst, interval } => {
                // The queue drains one request per `interval`; a request is
                // released at `start` and waits until then.
                let start = match state {
                    State::Tat(t) => (*t).max(now),
                    _ => now,
                };
                // Requests queued ahead of this one, this one included.
                let waiting = (start - now).div_ceil(interval);
                if waiting > burst {
                    return Decision::Deny {
                        quota: Quota {
                            limit: burst,
                            remaining: 0,
                            reset: secs_ceil(start - now),
                        },
                        retry_after: secs_ceil(start - now - burst * interval).max(1),
                    };
                }
                *state = State::Tat(start + interval);
                Decision::Allow {
                    quota: Quota {
                        limit: burst,
                        remaining: burst - waiting,
                        reset: secs_ceil(start + interval - now),
                    },
                    wait: Duration::from_micros(start - now),
                }
            }
            Algorithm::FixedWindow { limit, window } => {
                let current = now - now % window;
                let count = match state {
                    State::Window { start, count, .. } if *start == current => *count,
                    _ => 0,
                };
                let decision = windowed(limit, count, secs_ceil(current + window - now));
                if matches!(decision, Decision::Allow { .. }) {
                    *state = State::Window {
                        start: current,
                        count: count + 1,
                        previous: 0,
                    };
                }
                decision
            }
            Algorithm::SlidingLog { limit, window } => {
                if !matches!(state, State::Log(_)) {
                    *state = State::Log(Default::default());
                }
                let State::Log(log) = state else { unreachable!() };
                while log.front().is_some_and(|t| *t + window <= now) {
                    log.pop_front();
                }
                let count = log.len() as u64;
                if count >= limit {
                    let oldest = log.front().copied().unwrap_or(now);
                    let free_at = secs_ceil(oldest + window - now);
                    let quota = Quota {
                        limit,
                        remaining: 0,
                        reset: secs_ceil(log.back().copied().unwrap_or(now) + window - now),
                    };
                    return Decision::Deny {
                        quota,
                        retry_after: free_at.max(1),
                    };
                }
                log.push_back(now);
                Decision::Allow {
                    quota: Quota {
                        limit,
                        remaining: limit - count - 1,
                        reset: secs_ceil(window),
                    },
                    wait: Duration::ZERO,
                }
            }
            Algorithm::SlidingCounter { limit, window } => {
                let current = now - now % window;
                let (count, previous) = match state {
                    State::Window {
                        start,
                        count,
                        previous,
                    } if *start == current => (*count, *previous),
                    State::Window { start, count, .. } if *start + window == current => (0, *count),
                    _ => (0, 0),
                };
                // The share of the previous window the sliding span still covers.
                let left = window - (now - current);
                let weighted = (previous as u128 * left as u128 / window as u128) as u64 + count;
                let decision = windowed(limit, weighted, secs_ceil(left));
                if matches!(decision, Decision::Allow { .. }) {
                    *state = State::Window {
                        start: current,
                        count: count + 1,
                        previous,
                    };
                }
                decision
            }
        }
    }
}

/// A window's answer when `counted` requests are already in it and it is
/// whole again in `reset` seconds.
fn windowed(limit: u64, counted: u64, reset: u64) -> Decision {
    if counted >= limit {
        return Decision::Deny {
            quota: Quota {
                limit,
                remaining: 0,
                reset,
            },
            retry_after: reset.max(1),
        };
    }
    Decision::Allow {
        quota: Quota {
            limit,
            remaining: limit - counted - 1,
            reset,
        },
        wait: Duration::ZERO,
    }
}

/// What a key is made of.
#[derive(Debug, Clone)]
enum KeyPart {
    Consumer,
    Ip,
    Route,
    Header(HeaderName),
    Global,
}

/// Parses `key` entries; errors name the entry.
fn key_parts(key: &[String]) -> Result<Vec<KeyPart>, (usize, String)> {
    if key.is_empty() {
        return Ok(vec![KeyPart::Ip]);
    }
    key.iter()
        .enumerate()
        .map(|(i, k)| match k.as_str() {
            "consumer" => Ok(KeyPart::Consumer),
            "ip" => Ok(KeyPart::Ip),
            "route" => Ok(KeyPart::Route),
            "global" => Ok(KeyPart::Global),
            other => match other.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(KeyPart::Header)
                    .map_err(|_| (i, format!("`{name}` is not a header name"))),
                None => Err((
                    i,
                    format!("unknown key `{other}`: one of consumer, ip, route, header:NAME, global"),
                )),
            },
        })
        .collect()
}

/// Hashed key → its state and when it was last used (µs).
type Shard = HashMap<u64, (State, u64)>;

/// A `store: local` policy's counts.
pub struct LocalCounts {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl LocalCounts {
    fn new() -> LocalCounts {
        LocalCounts {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// One policy and its counts.
pub struct Policy {
    algorithm: Algorithm,
    key: Vec<KeyPart>,
    counts: Counts,
}

/// Where a policy's counts live.
enum Counts {
    /// In this process (`store: local`); kept across reloads that leave the
    /// policy as it was.
    Local(Arc<LocalCounts>),
    /// In Redis (`store: redis`), shared by every gateway node: each
    /// decision is one Lua script run (one round trip, atomic), timed by
    /// Redis's clock. Keys are `rl:{<policy>:<digest>}`: the hash tag keeps
    /// every key of one decision in one Redis Cluster slot.
    Redis {
        redis: Arc<Redis>,
        /// The policy's place in the config (the same on every node).
        id: String,
        on_error: OnStoreError,
    },
    /// Decided here, synced with Redis every `sync_interval` (`store: hybrid`).
    Hybrid { counts: Arc<HybridCounts>, id: String },
}

impl Policy {
    /// Errors name the field under the policy.
    pub fn new(
        cfg: &RateLimitPolicy,
        redis: Option<Arc<Redis>>,
        carried: &Carried<LocalCounts>,
        id: &str,
    ) -> Result<Policy, (String, String)> {
        let algorithm = match cfg.algorithm {
            RateLimitAlgorithm::TokenBucket | RateLimitAlgorithm::LeakyBucket => {
                let rate = cfg.rate.as_ref().ok_or_else(|| {
                    (
                        "rate".to_string(),
                        "a bucket needs `rate` (e.g. 10/s)".to_string(),
                    )
                })?;
                if rate.count == 0 {
                    return Err(("rate".into(), "must be more than 0".into()));
                }
                let interval = (rate.per.as_micros() as u64 / rate.count).max(1);
                let burst = cfg.burst.unwrap_or(rate.count).max(1);
                if cfg.algorithm == RateLimitAlgorithm::TokenBucket {
                    Algorithm::TokenBucket { burst, interval }
                } else {
                    Algorithm::LeakyBucket { burst, interval }
                }
            }
            alg => {
                let limit = cfg.limit.ok_or_else(|| {
                    (
                        "limit".to_string(),
                        "a window needs `limit` and `window`".to_string(),
                    )
                })?;
                let window = cfg.window.ok_or_else(|| {
                    (
                        "window".to_string(),
                        "a window needs `limit` and `window`".to_string(),
                    )
                })?;
                let window = window.0.as_micros() as u64;
                if window < 1_000 {
                    return Err(("window".into(), "must be at least 1ms".into()));
                }
                match alg {
                    RateLimitAlgorithm::FixedWindow => Algorithm::FixedWindow { limit, window },
                    RateLimitAlgorithm::SlidingWindowLog => {
                        if limit > 100_000 {
                            return Err((
                                "limit".into(),
                                "sliding_window_log keeps one timestamp per request: at most 100000; use sliding_window_counter".into(),
                            ));
                        }
                        Algorithm::SlidingLog { limit, window }
                    }
                    _ => Algorithm::SlidingCounter { limit, window },
                }
            }
        };
        let key = key_parts(&cfg.key).map_err(|(i, e)| (format!("key[{i}]"), e))?;
        let counts = match cfg.store {
            Store::Local | Store::Memory => {
                // The same policy at the same place keeps its counts.
                let what = format!("{id} {cfg:?}");
                let counts =
                    carried.get_or_make(&what, || Ok::<_, std::convert::Infallible>(LocalCounts::new()));
                Counts::Local(counts.unwrap_or_else(|never| match never {}))
            }
            Store::Redis => Counts::Redis {
                redis: redis.ok_or_else(|| {
                    (
                        "store".to_string(),
                        "`store: redis` needs the top-level `redis` section".to_string(),
                    )
                })?,
                id: id.to_string(),
                on_error: cfg.on_store_error,
            },
            Store::Hybrid => {
                if matches!(
                    algorithm,
                    Algorithm::LeakyBucket { .. } | Algorithm::SlidingLog { .. }
                ) {
                    return Err((
                        "store".into(),
                        "`store: hybrid` works with token_bucket, fixed_window and sliding_window_counter"
                            .into(),
                    ));
                }
                let redis = redis.ok_or_else(|| {
                    (
                        "store".to_string(),
                        "`store: hybrid` needs the top-level `redis` section".to_string(),
                    )
                })?;
                if cfg.sync_interval.0.is_zero() {
                    return Err(("sync_interval".into(), "must be more than 0".into()));
                }
                Counts::Hybrid {
                    counts: Arc::new(HybridCounts {
                        algorithm,
                        redis,
                        interval: cfg.sync_interval.0,
                        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                        started: Default::default(),
                    }),
                    id: id.to_string(),
                }
            }
        };
        Ok(Policy {
            algorithm,
            key,
            counts,
        })
    }

    /// Feeds the request's key parts to `h`.
    fn hash_key<H: Hasher>(&self, h: &mut H, ctx: &RequestCtx<'_>, req: &request::Parts) {
        for part in &self.key {
            match part {
                KeyPart::Consumer => ctx.consumer.as_ref().map(|c| c.name.as_str()).hash(h),
                KeyPart::Ip => ctx.client_ip.hash(h),
                KeyPart::Route => ctx.route.hash(h),
                KeyPart::Header(name) => req.headers.get(name).map(|v| v.as_bytes()).hash(h),
                KeyPart::Global => 0u8.hash(h),
            }
        }
    }

    /// Decides one request. `Err` only from Redis.
    pub async fn decide(
        &self,
        ctx: &RequestCtx<'_>,
        req: &request::Parts,
        now: u64,
    ) -> Result<Decision, String> {
        match &self.counts {
            Counts::Local(counts) => {
                // Keyed per policy, so clients cannot aim collisions at each other.
                let mut h = counts.hasher.build_hasher();
                self.hash_key(&mut h, ctx, req);
                Ok(self.decide_local(&counts.shards, h.finish(), now))
            }
            Counts::Redis { redis, id, .. } => {
                // The same on every node: a digest, not a per-process hash.
                let mut h = DigestHasher(Sha256::new());
                self.hash_key(&mut h, ctx, req);
                let digest = h.0.finalize();
                let key = format!("rl:{{{id}:{}}}", crate::hex::encode(&digest[..16]));
                self.decide_redis(redis, &key).await
            }
            Counts::Hybrid { counts, id } => {
                let mut h = DigestHasher(Sha256::new());
                self.hash_key(&mut h, ctx, req);
                Ok(counts.decide(&h.0.finalize(), id, now))
            }
        }
    }

    fn decide_local(&self, shards: &[Mutex<Shard>], key: u64, now: u64) -> Decision {
        let mut shard = shards[key as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= MAX_KEYS / SHARDS && !shard.contains_key(&key) {
            // Keys at rest are as good as new: drop them.
            let memory = self.algorithm.memory();
            shard.retain(|_, (_, last)| now.saturating_sub(*last) < memory);
            if shard.len() >= MAX_KEYS / SHARDS {
                // All busy: make room by forgetting the least recent key.
                if let Some(oldest) = shard.iter().min_by_key(|(_, (_, last))| *last).map(|(k, _)| *k) {
                    shard.remove(&oldest);
                }
            }
        }
        let (state, last) = shard.entry(key).or_default();
        *last = now;
        self.algorithm.decide(state, now)
    }

    /// One script run decides and counts; the answer is the state it saw,
    /// replayed through [`Algorithm::decide`] for the quota.
    async fn decide_redis(&self, redis: &Redis, key: &str) -> Result<Decision, String> {
        let (now, x, y) = run_script(redis, key, self.algorithm, 0).await?;
        let mut state = match self.algorithm {
            Algorithm::TokenBucket { .. } | Algorithm::LeakyBucket { .. } => State::Tat(x),
            Algorithm::FixedWindow { window, .. } | Algorithm::SlidingCounter { window, .. } => {
                State::Window {
                    start: now - now % window,
                    count: x,
                    previous: y,
                }
            }
            Algorithm::SlidingLog { limit, window } => {
                // x requests in the span, the oldest at y.
                return Ok(if x >= limit {
                    Decision::Deny {
                        quota: Quota {
                            limit,
                            remaining: 0,
                            reset: secs_ceil(window),
                        },
                        retry_after: secs_ceil((y + window).saturating_sub(now)).max(1),
                    }
                } else {
                    Decision::Allow {
                        quota: Quota {
                            limit,
                            remaining: limit - x - 1,
                            reset: secs_ceil(window),
                        },
                        wait: Duration::ZERO,
                    }
                });
            }
        };
        Ok(self.algorithm.decide(&mut state, now))
    }
}

/// Runs `rate_limit.lua` for `key`: one decision (`n` = 0), or `n`
/// requests counted (a hybrid sync). Returns Redis's time and the state.
async fn run_script(
    redis: &Redis,
    key: &str,
    algorithm: Algorithm,
    n: u64,
) -> Result<(u64, u64, u64), String> {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(include_str!("rate_limit.lua")));
    let (code, a, b) = match algorithm {
        Algorithm::TokenBucket { burst, interval } => ("tb", burst, interval),
        Algorithm::LeakyBucket { burst, interval } => ("lb", burst, interval),
        Algorithm::FixedWindow { limit, window } => ("fw", limit, window),
        Algorithm::SlidingLog { limit, window } => ("sl", limit, window),
        Algorithm::SlidingCounter { limit, window } => ("sc", limit, window),
    };
    let mut invocation = SCRIPT.key(key);
    invocation.arg(code).arg(a).arg(b).arg(n);
    let (_, now, x, y): (i64, u64, u64, u64) = redis.script(&invocation).await?;
    Ok((now, x, y))
}

/// A `store: hybrid` policy's counts: decided here, synced with Redis.
///
/// Each node decides from its own copy of a key's state and notes what it
/// let through; every `sync_interval` it adds that to the key's state in
/// Redis (one script run per key) and takes the global state back. Between
/// two syncs a node sees only its own requests on top of the last global
/// state, so N nodes admit at most the limit plus what the other N−1 let
/// through in one `sync_interval` (each at most the limit).
pub struct HybridCounts {
    algorithm: Algorithm,
    redis: Arc<Redis>,
    interval: Duration,
    shards: Box<[Mutex<HashMap<u64, HybridEntry>>]>,
    started: std::sync::atomic::AtomicBool,
}

struct HybridEntry {
    state: State,
    last: u64,
    /// Let through here since the last sync.
    pending: u64,
    redis_key: String,
}

impl HybridCounts {
    fn decide(self: &Arc<Self>, digest: &[u8], id: &str, now: u64) -> Decision {
        if !self.started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(Self::sync_loop(Arc::downgrade(self)));
        }
        let hash = u64::from_le_bytes(digest[..8].try_into().unwrap_or_default());
        let mut shard = self.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if shard.len() >= MAX_KEYS / SHARDS && !shard.contains_key(&hash) {
            let memory = self.algorithm.memory();
            shard.retain(|_, e| e.pending > 0 || now.saturating_sub(e.last) < memory);
        }
        let entry = shard.entry(hash).or_insert_with(|| HybridEntry {
            state: State::Fresh,
            last: now,
            pending: 0,
            redis_key: format!("rl:{{{id}:{}}}", crate::hex::encode(&digest[..16])),
        });
        entry.last = now;
        let decision = self.algorithm.decide(&mut entry.state, now);
        if matches!(decision, Decision::Allow { .. }) {
            entry.pending += 1;
        }
        decision
    }

    async fn sync_loop(this: std::sync::Weak<HybridCounts>) {
        loop {
            let Some(counts) = this.upgrade() else { return };
            tokio::time::sleep(counts.interval).await;
            counts.sync().await;
        }
    }

    /// Sends what was let through since the last sync and takes the global
    /// state back. A failed sync keeps the counts for the next one.
    async fn sync(&self) {
        let mut batch = Vec::new();
        for (i, shard) in self.shards.iter().enumerate() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (hash, e) in shard.iter_mut().filter(|(_, e)| e.pending > 0) {
                batch.push((i, *hash, e.redis_key.clone(), std::mem::take(&mut e.pending)));
            }
        }
        for (i, hash, key, n) in batch {
            let result = run_script(&self.redis, &key, self.algorithm, n).await;
            let mut shard = self.shards[i].lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = shard.get_mut(&hash) else {
                continue;
            };
            match result {
                Ok((now, x, y)) => {
                    entry.state = match self.algorithm {
                        Algorithm::FixedWindow { window, .. } | Algorithm::SlidingCounter { window, .. } => {
                            State::Window {
                                start: now - now % window,
                                count: x + entry.pending,
                                previous: y,
                            }
                        }
                        _ => State::Tat(match self.algorithm {
                            Algorithm::TokenBucket { interval, .. } => x + entry.pending * interval,
                            _ => x,
                        }),
                    };
                }
                Err(e) => {
                    entry.pending += n;
                    crate::telemetry::metrics().rate_limit_store_errors.inc();
                    tracing::warn!(error = %e, "rate limit sync to Redis failed; counts kept for the next sync");
                }
            }
        }
    }
}

/// A [`Hasher`] over SHA-256, for keys that must be the same on every node.
struct DigestHasher(Sha256);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

/// The `rate_limit` plugin: its policies, checked in order.
pub struct RateLimit {
    policies: Vec<Policy>,
}

impl RateLimit {
    /// Errors name the field under `rate_limit`. `scope` names where the
    /// plugin sits in the config (`routes[3].plugins`): with `store: redis`
    /// it names the policy's counts, so it must be the same on every node.
    pub fn new(
        policies: &[RateLimitPolicy],
        redis: Option<Arc<Redis>>,
        carried: &Carried<LocalCounts>,
        scope: &str,
    ) -> Result<RateLimit, (String, String)> {
        let many = policies.len() > 1;
        let mut out = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let at = |field: String| if many { format!("[{i}].{field}") } else { field };
            let id = format!("{scope}.rate_limit[{i}]");
            out.push(Policy::new(p, redis.clone(), carried, &id).map_err(|(f, e)| (at(f), e))?);
        }
        Ok(RateLimit { policies: out })
    }

    /// Lets the request through (perhaps after a wait), or refuses it with
    /// 429. The quota for the response headers goes into `ctx`.
    pub async fn check(&self, ctx: &mut RequestCtx<'_>, req: &request::Parts) -> Result<(), GatewayError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut wait = Duration::ZERO;
        let mut closest: Option<Quota> = None;
        let mut refused = None;
        for policy in &self.policies {
            let decision = match policy.decide(ctx, req, now).await {
                Ok(d) => d,
                Err(cause) => {
                    let deny = matches!(
                        policy.counts,
                        Counts::Redis {
                            on_error: OnStoreError::Deny,
                            ..
                        }
                    );
                    crate::telemetry::metrics().rate_limit_store_errors.inc();
                    tracing::warn!(request_id = crate::telemetry::id_text(&ctx.request_id), error = %cause, deny, "rate limit store failed");
                    if deny {
                        return Err(GatewayError::Unavailable {
                            plugin: "rate_limit",
                            cause,
                        });
                    }
                    continue;
                }
            };
            match decision {
                Decision::Allow { quota, wait: w } => {
                    wait = wait.max(w);
                    if closest.is_none_or(|c| quota.remaining < c.remaining) {
                        closest = Some(quota);
                    }
                }
                Decision::Deny { quota, retry_after } => {
                    refused = Some((quota, retry_after));
                    break;
                }
            }
        }
        if let Some((quota, retry_after)) = refused {
            ctx.quota = Some(quota);
            return Err(GatewayError::RateLimited { retry_after });
        }
        ctx.quota = closest;
        if !wait.is_zero() {
            // A wait the route's timeout would cut short is a refusal now.
            if tokio::time::Instant::now() + wait >= ctx.deadline {
                return Err(GatewayError::RateLimited {
                    retry_after: secs_ceil(wait.as_micros() as u64).max(1),
                });
            }
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn run(alg: Algorithm, times: &[u64]) -> Vec<bool> {
        let mut state = State::Fresh;
        times
            .iter()
            .map(|t| matches!(alg.decide(&mut state, *t), Decision::Allow { .. }))
            .collect()
    }

    #[test]
    fn token_bucket_burst_then_rate() {
        // 10/s, burst 5: five at once, the sixth refused; one more each 100 ms.
        let alg = Algorithm::TokenBucket {
            burst: 5,
            interval: S / 10,
        };
        let t0 = 1000 * S;
        let mut at = vec![t0; 6];
        at.extend([t0 + S / 10 - 1, t0 + S / 10, t0 + S / 10]);
        assert_eq!(
            run(alg, &at),
            [true, true, true, true, true, false, false, true, false]
        );
        let mut state = State::Fresh;
        let Decision::Allow { quota, .. } = alg.decide(&mut state, t0) else {
            panic!()
        };
        assert_eq!((quota.limit, quota.remaining), (5, 4));
    }

    #[test]
    fn leaky_bucket_queues_then_refuses() {
        // 10/s, a queue of 3: the first goes now, three wait 100, 200, 300 ms.
        let alg = Algorithm::LeakyBucket {
            burst: 3,
            interval: S / 10,
        };
        let t0 = 1000 * S;
        let mut state = State::Fresh;
        let waits: Vec<Option<u64>> = (0..6)
            .map(|_| match alg.decide(&mut state, t0) {
                Decision::Allow { wait, .. } => Some(wait.as_millis() as u64),
                Decision::Deny { .. } => None,
            })
            .collect();
        assert_eq!(waits, [Some(0), Some(100), Some(200), Some(300), None, None]);
        // 100 ms later one left the queue: room for one more, then full again.
        assert!(matches!(
            alg.decide(&mut state, t0 + S / 10),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            alg.decide(&mut state, t0 + S / 10),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn fixed_window_is_aligned_to_the_clock() {
        let alg = Algorithm::FixedWindow {
            limit: 2,
            window: 60 * S,
        };
        let minute = 1_000_020 * 60 * S / 60; // a whole minute
        let minute = minute - minute % (60 * S);
        let at = [
            minute + 59 * S,
            minute + 59 * S,
            minute + 59 * S,
            minute + 60 * S,
            minute + 60 * S,
            minute + 60 * S,
        ];
        assert_eq!(run(alg, &at), [true, true, false, true, true, false]);
        let mut state = State::Fresh;
        let Decision::Allow { quota, .. } = alg.decide(&mut state, minute + 59 * S) else {
            panic!()
        };
        assert_eq!(quota.reset, 1);
    }

    #[test]
    fn sliding_log_counts_any_window_long_span() {
        let alg = Algorithm::SlidingLog {
            limit: 2,
            window: 10 * S,
        };
        let t = 1000 * S;
        // At t and t+5; t+9.999 refused; t+10 the first left the span.
        assert_eq!(
            run(alg, &[t, t + 5 * S, t + 10 * S - 1, t + 10 * S, t + 10 * S]),
            [true, true, false, true, false]
        );
    }

    #[test]
    fn sliding_counter_weighs_the_previous_window() {
        let alg = Algorithm::SlidingCounter {
            limit: 10,
            window: 10 * S,
        };
        let w = 1000 * S; // a window start
        let mut state = State::Fresh;
        for _ in 0..10 {
            assert!(matches!(alg.decide(&mut state, w + S), Decision::Allow { .. }));
        }
        assert!(matches!(alg.decide(&mut state, w + 2 * S), Decision::Deny { .. }));
        // Half into the next window, half the previous count still weighs: 5 more.
        let allowed = (0..8)
            .filter(|_| matches!(alg.decide(&mut state, w + 15 * S), Decision::Allow { .. }))
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn keys_are_checked() {
        assert!(key_parts(&["header:X-User".into(), "consumer".into()]).is_ok());
        assert!(key_parts(&["cookie:x".into()]).is_err());
        assert!(key_parts(&["header:bad name".into()]).is_err());
    }
}
