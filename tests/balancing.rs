//! Load balancing across real upstream servers.

mod support;

use std::collections::HashMap;

use http_body_util::Full;
use support::*;

async fn three() -> Vec<Upstream> {
    vec![
        Upstream::start("t0").await,
        Upstream::start("t1").await,
        Upstream::start("t2").await,
    ]
}

fn targets(ups: &[Upstream], weights: &[u32]) -> String {
    ups.iter()
        .zip(weights)
        .map(|(u, w)| format!("{{url: \"{}\", weight: {w}}}", u.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gateway(ups: &[Upstream], weights: &[u32], lb: &str) -> Gateway {
    Gateway::start(&config(
        &format!("  - name: pool\n    targets: [{}]\n{lb}", targets(ups, weights)),
        "  - name: r\n    match: {paths: [\"/\"]}\n    upstream: pool\n",
        "",
    ))
}

async fn tally(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let c = client_h1();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let mut b = req("GET", &gw.url("/x"));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let r = send(&c, b.body(Full::default()).unwrap()).await;
        assert_eq!(r.status, 200);
        *seen.entry(r.header("x-upstream").to_string()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let ups = three().await;
    let gw = gateway(&ups, &[100, 100, 100], "    load_balancing: round_robin\n");
    let seen = tally(&gw, 30, &[]).await;
    assert_eq!(
        seen.values().copied().collect::<Vec<_>>(),
        vec![10, 10, 10],
        "{seen:?}"
    );
}

#[tokio::test]
async fn weighted_follows_weights() {
    let ups = three().await;
    let gw = gateway(&ups, &[300, 100, 100], "    load_balancing: weighted\n");
    let seen = tally(&gw, 50, &[]).await;
    assert_eq!((seen["t0"], seen["t1"], seen["t2"]), (30, 10, 10), "{seen:?}");
}

#[tokio::test]
async fn least_connections_avoids_the_busy_target() {
    let ups = three().await;
    let gw = gateway(&ups, &[100, 100, 100], "    load_balancing: least_connections\n");
    // Occupy two targets with slow requests, then the fast ones go to the third... mostly.
    let c = client_h1();
    let mut slow = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let url = gw.url("/delay/1500");
        slow.push(tokio::spawn(async move {
            send(&c, req("GET", &url).body(Full::default()).unwrap()).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let busy: Vec<String> = ups
        .iter()
        .filter(|u| u.count() == 1)
        .map(|u| u.name.clone())
        .collect();
    assert_eq!(busy.len(), 2, "the two slow requests went to two targets");
    let seen = tally(&gw, 10, &[]).await;
    for b in &busy {
        assert!(!seen.contains_key(b), "a busy target got traffic: {seen:?}");
    }
    for s in slow {
        assert_eq!(s.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn random_two_uses_every_target_and_avoids_busy_ones() {
    let ups = three().await;
    let gw = gateway(&ups, &[100, 100, 100], "    load_balancing: random_two\n");
    let seen = tally(&gw, 60, &[]).await;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&c| c >= 8), "{seen:?}");
}

#[tokio::test]
async fn consistent_hash_on_header_cookie_and_ip() {
    let ups = three().await;
    let gw = gateway(
        &ups,
        &[100, 100, 100],
        "    load_balancing: consistent_hash\n    hash_on: header:X-User-Id\n",
    );
    let mut owners = HashMap::new();
    for user in 0..30 {
        let id = format!("user-{user}");
        let seen = tally(&gw, 4, &[("x-user-id", &id)]).await;
        assert_eq!(seen.len(), 1, "user {id} moved between targets: {seen:?}");
        owners.insert(id, seen.into_keys().next().unwrap());
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "30 users all landed on {distinct:?}");

    let gw = gateway(
        &ups,
        &[100, 100, 100],
        "    load_balancing: consistent_hash\n    hash_on: cookie:session\n",
    );
    let seen = tally(&gw, 6, &[("cookie", "theme=dark; session=abc123")]).await;
    assert_eq!(seen.len(), 1, "{seen:?}");

    let gw = gateway(
        &ups,
        &[100, 100, 100],
        "    load_balancing: consistent_hash\n    hash_on: ip\n",
    );
    let seen = tally(&gw, 6, &[]).await;
    assert_eq!(seen.len(), 1, "one client IP, one target: {seen:?}");
}
