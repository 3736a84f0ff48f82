//! The demo's HTTP services: small JSON APIs on 127.0.0.1:0.
//!
//! - users: `GET /users/{id}` (`1` or `ann`, `2` or `bob`; else 404)
//! - orders: `GET /orders?user=U&limit=N`, `GET /catalog` (about 2 KiB)
//! - recommendations: `GET /recs/{user}`, and `GET /fail`, always 502

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(Clone, Copy)]
pub enum Kind {
    Users,
    Orders,
    Recommendations,
}

/// Starts one service; its address.
pub async fn start(kind: Kind) -> Result<SocketAddr, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot start a demo service: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(answer(kind, &req))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn answer(kind: Kind, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| crate::plugins::query_value(query, name);
    match (
        kind,
        path.trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path.trim_start_matches('/'), "")),
    ) {
        (Kind::Users, ("users", id)) => match id {
            "1" | "ann" => json_answer(
                StatusCode::OK,
                json!({"id": "ann", "name": "Ann Lee", "email": "ann@example.com", "tier": "gold"}),
            ),
            "2" | "bob" => json_answer(
                StatusCode::OK,
                json!({"id": "bob", "name": "Bob Ray", "email": "bob@example.com", "tier": "free"}),
            ),
            _ => json_answer(StatusCode::NOT_FOUND, json!({"error": "no such user"})),
        },
        (Kind::Orders, ("orders", "")) => {
            let user = param("user").unwrap_or_default();
            let limit: usize = param("limit").and_then(|l| l.parse().ok()).unwrap_or(10).min(10);
            let orders: Vec<_> = (0..limit)
                .map(|i| json!({"id": 1000 + i, "user": user, "total_cents": 1250 * (i + 1), "status": "shipped"}))
                .collect();
            json_answer(StatusCode::OK, json!(orders))
        }
        (Kind::Orders, ("catalog", "")) => {
            let items: Vec<_> = (1..=24)
                .map(|i| json!({"sku": format!("sku-{i}"), "name": format!("Product {i}"), "price_cents": 990 + i * 10}))
                .collect();
            let served_at = crate::plugins::unix_now();
            json_answer(StatusCode::OK, json!({"served_at": served_at, "items": items}))
        }
        (Kind::Recommendations, ("recs", user)) => json_answer(
            StatusCode::OK,
            json!([{"sku": "sku-2", "because": format!("{user} bought sku-1")}, {"sku": "sku-3", "because": "popular"}]),
        ),
        (Kind::Recommendations, ("fail", "")) => json_answer(
            StatusCode::BAD_GATEWAY,
            json!({"error": "the model server is down"}),
        ),
        _ => json_answer(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}
