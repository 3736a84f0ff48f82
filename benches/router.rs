//! Route lookup cost against the number of routes (must stay flat: a trie,
//! not a scan). `cargo bench --bench router`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use portcullis::router::{Conditions, Lookup, PathPattern, RouteRequest, RouteTable};

/// `n` routes of mixed kinds, like a real API: prefixes, templates, exact
/// paths, some with hosts and methods.
fn table(n: usize) -> RouteTable {
    let routes: Vec<_> = (0..n)
        .map(|i| {
            let path = match i % 4 {
                0 => format!("/svc{i}/items"),
                1 => format!("/svc{i}/items/{{id}}"),
                2 => format!("= /svc{i}/health"),
                _ => format!("/svc{i}/users/{{id}}/orders/{{rest*}}"),
            };
            let cond = Conditions {
                methods: if i % 2 == 0 {
                    vec!["GET".into(), "POST".into()]
                } else {
                    vec![]
                },
                hosts: if i % 5 == 0 {
                    vec!["*.example.com".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            };
            (i, vec![PathPattern::parse(&path).unwrap()], cond)
        })
        .collect();
    RouteTable::build(&routes).map_err(|_| "build").unwrap()
}

fn lookup(c: &mut Criterion) {
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 10_000] {
        let t = table(n);
        // A template route near the end of the table, and a miss.
        let hit = format!("/svc{}/items/42", (n - 3) / 4 * 4 + 1);
        assert!(matches!(
            t.lookup(&RouteRequest {
                host: Some("api.example.com"),
                method: &Method::GET,
                path: &hit,
                headers: &headers
            }),
            Lookup::Found(_)
        ));
        group.bench_function(format!("hit/{n}"), |b| {
            b.iter(|| {
                black_box(t.lookup(&RouteRequest {
                    host: Some("api.example.com"),
                    method: &Method::GET,
                    path: black_box(&hit),
                    headers: &headers,
                }))
            })
        });
        group.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| {
                black_box(t.lookup(&RouteRequest {
                    host: Some("api.example.com"),
                    method: &Method::GET,
                    path: black_box("/nothing/here/at/all"),
                    headers: &headers,
                }))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
