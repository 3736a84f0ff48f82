//! `portcullis demo [--port N]`: the gateway in front of sample services
//! started in the same process, with an embedded config that switches on
//! the main capabilities, and a printed tour of curl commands.
//!
//! ```text
//! sample services on 127.0.0.1:0 (users, orders, recommendations over
//!   HTTP; inventory over gRPC) → the demo config, their ports filled in
//!   → the gateway on 127.0.0.1:PORT → the tour → Ctrl-C
//! ```
//!
//! Every command of the tour is run by `tests/demo.rs`.

mod inventory;
mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The API key of the demo consumer.
pub const DEMO_KEY: &str = "demo-key";

/// What the demo serves and prints.
struct Demo {
    /// The config and descriptor set written for the gateway to read.
    dir: PathBuf,
    tour: String,
}

/// Runs the demo until `shutdown`; the error is one line for the user.
pub async fn run(port: u16, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    // Said before anything starts: the one failure a newcomer may hit. Held
    // while the services bind, so that none of them takes the port.
    let reserved =
        std::net::TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let users = services::start(services::Kind::Users).await?;
    let orders = services::start(services::Kind::Orders).await?;
    let recs = services::start(services::Kind::Recommendations).await?;
    let inventory = inventory::start().await?;
    let demo = Demo::new(address, users, orders, recs, inventory)?;
    let startup = crate::Startup::load(demo.dir.join("portcullis-demo.yaml")).map_err(|e| e.to_string());
    let mut startup = match startup {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&demo.dir);
            return Err(e);
        }
    };
    startup.watch = false;
    // Poll the shutdown future once, so Ctrl-C is handled (not fatal) from
    // the moment the tour invites the user to press it.
    let mut shutdown = Box::pin(shutdown);
    tokio::select! {
        biased;
        () = &mut shutdown => {
            let _ = std::fs::remove_dir_all(&demo.dir);
            return Ok(());
        }
        () = std::future::ready(()) => {}
    }
    drop(reserved);
    // The tour only once the gateway accepts connections: its first command
    // may run at once.
    let result = crate::run(startup, || print!("{}", demo.tour), shutdown).await;
    let _ = std::fs::remove_dir_all(&demo.dir);
    result
}

impl Demo {
    fn new(
        gateway: SocketAddr,
        users: SocketAddr,
        orders: SocketAddr,
        recs: SocketAddr,
        inventory: SocketAddr,
    ) -> Result<Demo, String> {
        let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let pb = dir.join("inventory.pb");
        std::fs::write(&pb, inventory::DESCRIPTOR_SET)
            .map_err(|e| format!("cannot write {}: {e}", pb.display()))?;
        // A fresh secret each run: the printed token is the only one valid.
        let secret: String = (0..32).map(|_| fastrand::alphanumeric()).collect();
        let token = mint_token(&secret)?;
        let config = format!(
            include_str!("demo/demo.yaml"),
            gateway = gateway,
            users = users,
            orders = orders,
            recs = recs,
            inventory = inventory,
            descriptor_set = pb.display(),
            secret = secret,
            key = DEMO_KEY,
        );
        std::fs::write(dir.join("portcullis-demo.yaml"), &config)
            .map_err(|e| format!("cannot write the demo config: {e}"))?;
        let tour = tour(gateway, &token);
        Ok(Demo { dir, tour })
    }
}

/// An HS256 token for subject `ann`, valid for a day.
fn mint_token(secret: &str) -> Result<String, String> {
    let exp = crate::plugins::unix_now() + 86_400;
    let claims = serde_json::json!({"sub": "ann", "iss": "portcullis-demo", "exp": exp});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("demo".into());
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("cannot mint the demo token: {e}"))
}

/// The tour: numbered steps, each a copy-pasteable command and, after
/// `#`, the HTTP status its last answer has and what to look for.
fn tour(gw: SocketAddr, token: &str) -> String {
    let u = format!("http://{gw}");
    let steps = [
        (
            format!("curl -si {u}/api/users/1"),
            "401  problem+json: the API key is missing".to_string(),
        ),
        (
            format!("curl -si -H 'X-Api-Key: {DEMO_KEY}' {u}/api/users/1"),
            "200  the users service, through the gateway".to_string(),
        ),
        (
            format!("curl -si -H 'Authorization: Bearer not-a-token' {u}/api/home"),
            "401  problem+json with WWW-Authenticate: a bad token".to_string(),
        ),
        (
            format!("curl -si -H 'Authorization: Bearer {token}' {u}/api/home"),
            "200  one answer from users, orders and recommendations".to_string(),
        ),
        (
            format!(
                "for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\\n' {u}/api/limited; done"
            ),
            "429  five pass, the sixth is rate limited (RateLimit-* headers, Retry-After)".to_string(),
        ),
        (
            format!(
                "curl -si {u}/api/catalog -o /dev/null -w '%{{http_code}}\\n' && curl -si {u}/api/catalog | grep -iE '^(HTTP|x-cache)'"
            ),
            "200  X-Cache: MISS, then HIT: the second never reached the orders service".to_string(),
        ),
        (
            format!("for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}}\\n' {u}/api/flaky; done"),
            "503  502s from a failing service, then the circuit opens: 503 circuit-open".to_string(),
        ),
        (
            format!("curl -si {u}/v1/inventory/sku-1"),
            "200  REST/JSON transcoded to the gRPC inventory service".to_string(),
        ),
        (
            format!("curl -si {u}/v1/inventory/sku-404"),
            "404  gRPC NOT_FOUND as problem+json".to_string(),
        ),
        (
            format!("curl -si {u}/metrics | grep -E '^HTTP|^portcullis_cache_requests_total'"),
            "200  Prometheus metrics: requests, latencies, cache, breaker, rate limits".to_string(),
        ),
    ];
    let mut out = format!(
        "Portcullis demo on {u}\n\
         \x20 API key:   {DEMO_KEY}\n\
         \x20 JWT (sub ann, valid 24 h): {token}\n\
         \x20 services:  users, orders, recommendations (HTTP), inventory (gRPC), in this process\n\n\
         Try (each line: the command, then # the status to expect and what to look for):\n"
    );
    for (i, (cmd, what)) in steps.iter().enumerate() {
        out.push_str(&format!("{:>2}. {cmd}\n    # {what}\n", i + 1));
    }
    out.push_str("\nCtrl-C stops the demo.\n");
    out
}
