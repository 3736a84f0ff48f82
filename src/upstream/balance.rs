//! Choosing a target per request. Every algorithm is lock-free: counters are
//! atomics and the weighted schedule and hash ring are built once per config.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName};

use crate::config::LoadBalancing;

/// What `consistent_hash` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Ip,
    Consumer,
    Header(HeaderName),
    Cookie(String),
}

impl HashOn {
    pub fn parse(s: &str) -> Result<HashOn, String> {
        match s.split_once(':') {
            None if s == "ip" => Ok(HashOn::Ip),
            None if s == "consumer" => Ok(HashOn::Consumer),
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("`{name}` is not a valid header name")),
            Some(("cookie", name)) if !name.trim().is_empty() => Ok(HashOn::Cookie(name.trim().to_string())),
            _ => Err(format!(
                "`{s}`: expected ip, consumer, header:NAME or cookie:NAME"
            )),
        }
    }
}

/// The request facts balancing may use.
pub struct PickContext<'a> {
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub consumer: Option<&'a str>,
}

pub enum Balancer {
    RoundRobin {
        next: AtomicUsize,
    },
    /// Smooth weighted round robin, unrolled into a schedule of target indexes.
    Weighted {
        schedule: Vec<u32>,
        next: AtomicUsize,
    },
    LeastConnections {
        next: AtomicUsize,
    },
    RandomTwo,
    ConsistentHash {
        ring: Vec<(u64, u32)>,
        on: HashOn,
        fallback: AtomicUsize,
    },
}

/// Upper bound on the weighted schedule; weights are scaled down past it.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Points per target on the hash ring for a weight of 100.
const RING_POINTS: u64 = 160;

impl Balancer {
    pub fn new(algo: LoadBalancing, weights: &[u32], hash_on: Option<HashOn>) -> Balancer {
        match algo {
            LoadBalancing::RoundRobin => Balancer::RoundRobin {
                next: AtomicUsize::new(0),
            },
            LoadBalancing::Weighted => Balancer::Weighted {
                schedule: weighted_schedule(weights),
                next: AtomicUsize::new(0),
            },
            LoadBalancing::LeastConnections => Balancer::LeastConnections {
                next: AtomicUsize::new(0),
            },
            LoadBalancing::RandomTwo => Balancer::RandomTwo,
            LoadBalancing::ConsistentHash => Balancer::ConsistentHash {
                ring: hash_ring(weights),
                on: hash_on.unwrap_or(HashOn::Ip),
                fallback: AtomicUsize::new(0),
            },
        }
    }

    /// Index of the chosen target; `in_flight(i)` is its current load.
    pub fn pick(&self, n: usize, ctx: &PickContext<'_>, in_flight: impl Fn(usize) -> usize) -> usize {
        if n == 1 {
            return 0;
        }
        match self {
            Balancer::RoundRobin { next } => next.fetch_add(1, Ordering::Relaxed) % n,
            Balancer::Weighted { schedule, next } => {
                schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()] as usize
            }
            Balancer::LeastConnections { next } => {
                // Start the scan at a rotating offset so ties spread evenly.
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .min_by_key(|&i| in_flight(i))
                    .unwrap_or(0)
            }
            Balancer::RandomTwo => {
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                if in_flight(b) < in_flight(a) { b } else { a }
            }
            Balancer::ConsistentHash { ring, on, fallback } => match hash_key(on, ctx) {
                Some(h) => {
                    let i = ring.partition_point(|(p, _)| *p < h);
                    ring[i % ring.len()].1 as usize
                }
                None => fallback.fetch_add(1, Ordering::Relaxed) % n,
            },
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    // nginx's smooth weighted round robin: spreads heavy targets out instead of bursting.
    let mut current = vec![0i64; w.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &wi) in current.iter_mut().zip(&w) {
            *c += wi as i64;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, usize::MAX - i))
            .expect("targets");
        current[best] -= total as i64;
        schedule.push(best as u32);
    }
    schedule
}

fn hash_ring(weights: &[u32]) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for (i, &w) in weights.iter().enumerate() {
        let points = (RING_POINTS * u64::from(w) / 100).clamp(1, 4 * RING_POINTS * 10);
        for p in 0..points {
            ring.push((hash_bytes(format!("{i}-{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

fn hash_key(on: &HashOn, ctx: &PickContext<'_>) -> Option<u64> {
    match on {
        HashOn::Ip => Some(match ctx.client_ip {
            IpAddr::V4(v4) => hash_bytes(&v4.octets()),
            IpAddr::V6(v6) => hash_bytes(&v6.octets()),
        }),
        HashOn::Consumer => ctx.consumer.map(|c| hash_bytes(c.as_bytes())),
        HashOn::Header(name) => ctx.headers.get(name).map(|v| hash_bytes(v.as_bytes())),
        HashOn::Cookie(name) => cookie(ctx.headers, name).map(hash_bytes),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers.get_all(http::header::COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq] == *name.as_bytes()).then(|| &pair[eq + 1..])
        })
    })
}

/// FNV-1a with a splitmix64 finish: fast, stable across runs and nodes (so
/// every gateway node maps a key to the same target).
fn hash_bytes(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(headers: &HeaderMap) -> PickContext<'_> {
        PickContext {
            client_ip: "10.0.0.1".parse().unwrap(),
            headers,
            consumer: None,
        }
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(LoadBalancing::RoundRobin, &[1, 1, 1], None);
        let h = HeaderMap::new();
        let picks: Vec<_> = (0..6).map(|_| b.pick(3, &ctx(&h), |_| 0)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_follows_weights_smoothly() {
        let s = weighted_schedule(&[500, 100, 100]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(s, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_connections_prefers_idle() {
        let b = Balancer::new(LoadBalancing::LeastConnections, &[1, 1, 1], None);
        let h = HeaderMap::new();
        let load = [5, 0, 3];
        for _ in 0..5 {
            assert_eq!(b.pick(3, &ctx(&h), |i| load[i]), 1);
        }
    }

    #[test]
    fn random_two_never_picks_the_busiest_of_two() {
        let b = Balancer::new(LoadBalancing::RandomTwo, &[1, 1], None);
        let h = HeaderMap::new();
        for _ in 0..50 {
            assert_eq!(b.pick(2, &ctx(&h), |i| [9, 0][i]), 1);
        }
    }

    #[test]
    fn consistent_hash_is_sticky_and_spreads() {
        let b = Balancer::new(
            LoadBalancing::ConsistentHash,
            &[100, 100, 100],
            Some(HashOn::Header(HeaderName::from_static("x-user"))),
        );
        let mut seen = [0usize; 3];
        for u in 0..300 {
            let mut h = HeaderMap::new();
            h.insert("x-user", u.to_string().parse().unwrap());
            let first = b.pick(3, &ctx(&h), |_| 0);
            assert_eq!(b.pick(3, &ctx(&h), |_| 0), first);
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
    }

    #[test]
    fn cookies_and_hash_on_parse() {
        let mut h = HeaderMap::new();
        h.insert("cookie", "a=1; session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&h, "sess"), None);
        assert_eq!(HashOn::parse("cookie:sid").unwrap(), HashOn::Cookie("sid".into()));
        assert!(HashOn::parse("body").is_err());
    }
}
