//! Where cached answers live: this process's memory (bounded by bytes) or
//! Redis (shared by every node).
//!
//! Entries are grouped by host and path, one group per resource, holding
//! its variants (method, query, key headers, consumer, route), so that an
//! unsafe request drops every variant of its path in one step: one
//! `invalidate` in memory, one `DEL` in Redis (a hash per group).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::watch;

use crate::redis_client::Redis;

/// Variants kept per path; storing one more starts the group afresh.
const MAX_VARIANTS: usize = 64;
const FORMAT: u8 = 1;
const REDIS_PREFIX: &str = "portcullis:cache:";

/// One stored answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request headers the answer's `Vary` names, as they were.
    pub vary: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Unix milliseconds.
    pub stored: u64,
    pub expires: u64,
}

impl Entry {
    pub fn fresh(&self, now: u64) -> bool {
        now < self.expires
    }

    /// Whether a request with `headers` may be given this answer.
    pub fn vary_matches(&self, headers: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| headers.get(name) == value.as_ref())
    }

    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 8)
            .sum();
        self.body.len() + headers + 64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(self.weight() + 32);
        out.put_u8(FORMAT);
        out.put_u64(self.stored);
        out.put_u64(self.expires);
        out.put_u16(self.status.as_u16());
        out.put_u16(self.vary.len() as u16);
        for (name, value) in &self.vary {
            put_str(&mut out, name.as_str().as_bytes());
            match value {
                Some(v) => {
                    out.put_u8(1);
                    put_str(&mut out, v.as_bytes());
                }
                None => out.put_u8(0),
            }
        }
        out.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            put_str(&mut out, name.as_str().as_bytes());
            put_str(&mut out, value.as_bytes());
        }
        out.put_slice(&self.body);
        out.to_vec()
    }

    /// `None` for anything but a well-formed entry of this format.
    pub fn decode(data: &[u8]) -> Option<Entry> {
        let mut b = data;
        if b.remaining() < 21 || b.get_u8() != FORMAT {
            return None;
        }
        let stored = b.get_u64();
        let expires = b.get_u64();
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let n = take_u16(&mut b)?;
        let mut vary = Vec::with_capacity(n.into());
        for _ in 0..n {
            let name = HeaderName::from_bytes(take_str(&mut b)?).ok()?;
            let value = match take_u8(&mut b)? {
                0 => None,
                _ => Some(HeaderValue::from_bytes(take_str(&mut b)?).ok()?),
            };
            vary.push((name, value));
        }
        let n = take_u16(&mut b)?;
        let mut headers = HeaderMap::with_capacity(n.into());
        for _ in 0..n {
            let name = HeaderName::from_bytes(take_str(&mut b)?).ok()?;
            let value = HeaderValue::from_bytes(take_str(&mut b)?).ok()?;
            headers.append(name, value);
        }
        Some(Entry {
            status,
            headers,
            body: Bytes::copy_from_slice(b),
            vary,
            stored,
            expires,
        })
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

fn take_u8(b: &mut &[u8]) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn take_u16(b: &mut &[u8]) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn take_str<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    let (s, rest) = (b.get(..n)?, b.get(n..)?);
    *b = rest;
    Some(s)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One path's variants. Replaced whole on every change (copy on write), so
/// readers never lock.
struct Group {
    variants: Vec<(Box<str>, Arc<Entry>)>,
    expires: u64,
    weight: u32,
}

struct GroupExpiry;

impl moka::Expiry<String, Arc<Group>> for GroupExpiry {
    fn expire_after_create(&self, _: &String, g: &Arc<Group>, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_millis(g.expires.saturating_sub(unix_ms())))
    }

    fn expire_after_update(
        &self,
        _: &String,
        g: &Arc<Group>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(g.expires.saturating_sub(unix_ms())))
    }
}

enum Backend {
    Memory(moka::sync::Cache<String, Arc<Group>>),
    Redis(Arc<Redis>),
}

/// A cache store with the fills in progress on this node (request
/// coalescing). Carried over reloads, so a reload keeps what is cached.
pub struct Store {
    backend: Backend,
    fills: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// This request fills `key`; others asking for it wait until it is
/// dropped (the answer stored, or given up).
pub struct FillGuard {
    store: Arc<Store>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.store
            .fills
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

pub enum Turn {
    Lead(FillGuard),
    Wait(watch::Receiver<()>),
}

impl Store {
    pub fn memory(max_bytes: u64) -> Store {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &String, g: &Arc<Group>| g.weight)
            .expire_after(GroupExpiry)
            .build();
        Store {
            backend: Backend::Memory(cache),
            fills: Mutex::default(),
        }
    }

    pub fn redis(redis: Arc<Redis>) -> Store {
        Store {
            backend: Backend::Redis(redis),
            fills: Mutex::default(),
        }
    }

    pub async fn get(&self, group: &str, variant: &str) -> Result<Option<Arc<Entry>>, String> {
        match &self.backend {
            Backend::Memory(cache) => Ok(cache.get(group).and_then(|g| {
                g.variants
                    .iter()
                    .find(|(v, _)| &**v == variant)
                    .map(|(_, e)| e.clone())
            })),
            Backend::Redis(redis) => {
                let mut pipe = redis::pipe();
                pipe.cmd("HGET").arg(redis_key(group)).arg(variant);
                let (data,): (Option<Vec<u8>>,) = redis.query(&pipe).await?;
                Ok(data.and_then(|d| Entry::decode(&d)).map(Arc::new))
            }
        }
    }

    /// Stores at once when the store is this process's memory; hands the
    /// entry back when storing needs a round trip (Redis).
    pub fn put_now(&self, group: &str, variant: &str, entry: Entry) -> Option<Entry> {
        let Backend::Memory(cache) = &self.backend else {
            return Some(entry);
        };
        let now = unix_ms();
        let old = cache.get(group);
        let mut variants: Vec<(Box<str>, Arc<Entry>)> = match &old {
            Some(g) if g.variants.len() < MAX_VARIANTS => g
                .variants
                .iter()
                .filter(|(v, e)| &**v != variant && e.fresh(now))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        variants.push((variant.into(), Arc::new(entry)));
        let weight = variants
            .iter()
            .map(|(v, e)| v.len() + e.weight())
            .sum::<usize>()
            .saturating_add(group.len());
        let group_entry = Group {
            expires: variants.iter().map(|(_, e)| e.expires).max().unwrap_or(now),
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
            variants,
        };
        cache.insert(group.to_string(), Arc::new(group_entry));
        None
    }

    pub async fn put(&self, group: &str, variant: &str, entry: Entry) -> Result<(), String> {
        let Some(entry) = self.put_now(group, variant, entry) else {
            return Ok(());
        };
        let Backend::Redis(redis) = &self.backend else {
            return Ok(());
        };
        let ttl = entry.expires.saturating_sub(unix_ms()).max(1);
        let mut invocation = PUT_SCRIPT.key(redis_key(group));
        invocation
            .arg(variant)
            .arg(entry.encode())
            .arg(MAX_VARIANTS)
            .arg(ttl);
        redis.script::<()>(&invocation).await
    }

    /// Drops every variant of `group`.
    pub async fn purge(&self, group: &str) -> Result<(), String> {
        match &self.backend {
            Backend::Memory(cache) => {
                cache.invalidate(group);
                Ok(())
            }
            Backend::Redis(redis) => {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(redis_key(group)).ignore();
                redis.query::<()>(&pipe).await
            }
        }
    }

    /// Whether this request fills `key` or waits for the one that does.
    pub fn turn(self: &Arc<Self>, key: String) -> Turn {
        let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = fills.get(&key) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        fills.insert(key.clone(), rx);
        Turn::Lead(FillGuard {
            store: self.clone(),
            key,
            _done: tx,
        })
    }
}

fn redis_key(group: &str) -> String {
    format!("{REDIS_PREFIX}{group}")
}

/// Stores a variant in the group's hash, starting the hash afresh when it
/// holds too many, and keeps the hash alive as long as its longest-lived
/// variant (a variant past its own expiry is never served).
static PUT_SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 0
",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static str, expires: u64) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Entry {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(body.as_bytes()),
            vary: vec![
                (
                    HeaderName::from_static("accept-language"),
                    Some(HeaderValue::from_static("de")),
                ),
                (HeaderName::from_static("x-absent"), None),
            ],
            stored: 1,
            expires,
        }
    }

    #[test]
    fn entries_round_trip_and_bad_bytes_are_refused() {
        let e = entry("hello", 99);
        let bytes = e.encode();
        assert_eq!(Entry::decode(&bytes), Some(e));
        for cut in 0..bytes.len() - 5 {
            // Every truncation inside the head is refused, never a panic.
            let _ = Entry::decode(&bytes[..cut]);
        }
        assert_eq!(Entry::decode(b"\x02garbage"), None);
    }

    #[test]
    fn vary_is_matched_on_the_recorded_values() {
        let e = entry("x", 99);
        let mut h = HeaderMap::new();
        h.insert("accept-language", HeaderValue::from_static("de"));
        assert!(e.vary_matches(&h));
        h.insert("x-absent", HeaderValue::from_static("1"));
        assert!(!e.vary_matches(&h));
        h.remove("x-absent");
        h.insert("accept-language", HeaderValue::from_static("fr"));
        assert!(!e.vary_matches(&h));
    }

    #[tokio::test]
    async fn memory_groups_purge_every_variant_and_stay_bounded() {
        let store = Arc::new(Store::memory(64 << 10));
        let later = unix_ms() + 60_000;
        store.put("h/p", "GET a", entry("one", later)).await.unwrap();
        store.put("h/p", "GET b", entry("two", later)).await.unwrap();
        store.put("h/q", "GET a", entry("three", later)).await.unwrap();
        assert_eq!(
            &store.get("h/p", "GET b").await.unwrap().unwrap().body[..],
            b"two"
        );
        store.purge("h/p").await.unwrap();
        assert!(store.get("h/p", "GET a").await.unwrap().is_none());
        assert!(store.get("h/p", "GET b").await.unwrap().is_none());
        assert!(store.get("h/q", "GET a").await.unwrap().is_some());

        // Far more than 64 KiB stored: the total stays within the bound.
        let big: &'static str = Box::leak("x".repeat(8 << 10).into_boxed_str());
        for i in 0..100 {
            store
                .put(&format!("h/{i}"), "GET", entry(big, later))
                .await
                .unwrap();
        }
        let Backend::Memory(cache) = &store.backend else {
            unreachable!()
        };
        cache.run_pending_tasks();
        assert!(cache.weighted_size() <= 64 << 10, "{}", cache.weighted_size());
    }

    #[test]
    fn one_fill_per_key() {
        let store = Arc::new(Store::memory(1 << 20));
        let Turn::Lead(guard) = store.turn("k".into()) else {
            panic!("first should lead")
        };
        let Turn::Wait(rx) = store.turn("k".into()) else {
            panic!("second should wait")
        };
        drop(guard);
        // The leader gone, the waiter is released and the next one leads.
        assert!(rx.has_changed().is_err());
        assert!(matches!(store.turn("k".into()), Turn::Lead(_)));
    }
}
