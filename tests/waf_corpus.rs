//! The WAF measured against the OWASP CRS regression corpus
//! (vendored in `tests/fixtures/crs-regression`) and a benign corpus of our own,
//! through the real binary: one gateway per paranoia level, every corpus
//! request sent as raw bytes over its own connection to 127.0.0.1.
//!
//! Prints, per family and paranoia level, the share of attacks refused
//! (detection) and of benign inputs refused (false positives), and holds
//! them to floors and ceilings, so a broken WAF fails here.
//!
//!     cargo test --release --test waf_corpus -- --nocapture   # the report

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use support::*;
use yaml_rust2::{Yaml, YamlLoader};

/// One request of the corpus: raw bytes, and what it is.
struct Case {
    family: &'static str,
    /// The CRS rule's paranoia level.
    crs_paranoia: u8,
    attack: bool,
    raw: Vec<u8>,
}

/// The CRS rule file families, as our rule families name them.
fn family(rule_id: i64) -> &'static str {
    match rule_id / 1000 {
        920 | 921 => "protocol",
        930 | 931 => "path_traversal",
        932..=934 | 944 => "command_injection",
        941 => "xss",
        942 => "sqli",
        _ => "other",
    }
}

fn str_of(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The raw request of one corpus stage input, as a test client would send it.
fn raw_request(input: &Yaml) -> Option<Vec<u8>> {
    if let Some(encoded) = input["encoded_request"].as_str() {
        let compact: String = encoded.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD.decode(compact).ok();
    }
    let method = str_of(&input["method"]).unwrap_or_else(|| "GET".into());
    let uri = str_of(&input["uri"]).unwrap_or_else(|| "/".into());
    let version = str_of(&input["version"]).unwrap_or_else(|| "HTTP/1.1".into());
    let data = str_of(&input["data"]).unwrap_or_default();
    let autocomplete = input["autocomplete_headers"].as_bool().unwrap_or(true);
    let mut head = format!("{method} {uri} {version}\r\n");
    let mut has_length = false;
    let mut has_host = false;
    let mut has_type = false;
    if let Yaml::Hash(headers) = &input["headers"] {
        for (k, v) in headers {
            let (Some(k), Some(v)) = (str_of(k), str_of(v)) else {
                continue;
            };
            has_length |=
                k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
            has_host |= k.eq_ignore_ascii_case("host");
            has_type |= k.eq_ignore_ascii_case("content-type");
            if k.eq_ignore_ascii_case("connection") {
                continue;
            }
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if !has_host && autocomplete {
        head.push_str("Host: localhost\r\n");
    }
    // As the CRS test runner (go-ftw) completes a request with a body.
    if autocomplete && !has_length && !data.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", data.len()));
    }
    if autocomplete && !has_type && !data.is_empty() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(data.as_bytes());
    Some(raw)
}

fn load_corpus() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crs-regression");
    let levels: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("paranoia-levels.json")).unwrap()).unwrap();
    let mut cases = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let Ok(docs) = YamlLoader::load_from_str(&text) else {
                continue;
            };
            for doc in docs {
                let Some(rule_id) = doc["rule_id"].as_i64() else {
                    continue;
                };
                let crs_paranoia = levels[rule_id.to_string()].as_u64().unwrap_or(1) as u8;
                let Some(tests) = doc["tests"].as_vec() else {
                    continue;
                };
                for test in tests {
                    let Some(stages) = test["stages"].as_vec() else {
                        continue;
                    };
                    for stage in stages {
                        let (input, output) = match &stage["input"] {
                            Yaml::BadValue => (&stage["stage"]["input"], &stage["stage"]["output"]),
                            input => (input, &stage["output"]),
                        };
                        let log = &output["log"];
                        let attack = match (&log["expect_ids"], &log["no_expect_ids"]) {
                            (Yaml::Array(_), _) => true,
                            (_, Yaml::Array(_)) => false,
                            _ => continue,
                        };
                        if let Some(raw) = raw_request(input) {
                            cases.push(Case {
                                family: family(rule_id),
                                crs_paranoia,
                                attack,
                                raw,
                            });
                        }
                    }
                }
            }
        }
    }
    cases
}

/// Benign traffic an API sees, which no paranoia-1 rule may refuse.
fn benign() -> Vec<Vec<u8>> {
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0\r\nAccept: application/json\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let post = |target: &str, content_type: &str, body: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let form = "application/x-www-form-urlencoded";
    let json = "application/json";
    vec![
        get("/customers?name=O%27Brien"),
        get("/customers?name=D%27Angelo&city=L%27Aquila"),
        get("/search?q=rock+%27n%27+roll"),
        get("/search?q=Tom%20%26%20Jerry"),
        get("/search?q=select+a+plan+for+your+team"),
        get("/search?q=where+to+eat+in+Paris"),
        get("/search?q=1+%2B+1+%3D+2"),
        get("/search?q=C%2B%2B+or+Rust"),
        get("/login?next=https%3A%2F%2Fapp.example.com%2Fdashboard%3Ftab%3D2"),
        get("/redirect?url=https://www.example.org/docs/index.html"),
        get("/track?ref=http%3A%2F%2Fnews.example.com%2F2026%2F11%2Farticle"),
        get("/orders?sort=-created_at&page=2&per_page=50"),
        get("/orders?filter[status]=shipped&filter[total][gte]=100"),
        get("/users/42/orders/2026-11-23"),
        get("/files/report-2026.pdf"),
        get("/products?tags=red,green,blue&price=10-20"),
        get("/calc?expr=(3*4)-2"),
        get("/emails?to=ann%40example.com&cc=bob%2Bnews%40example.com"),
        get("/search?q=%22exact+phrase%22"),
        get("/docs?path=guides/getting-started"),
        get("/weather?lat=48.8566&lon=2.3522&units=metric"),
        get("/i18n?greeting=%C3%A7a+va%3F&name=Zo%C3%AB"),
        get("/search?q=100%25+cotton"),
        post(
            "/comments",
            form,
            "author=Mary-Jane+O%27Neil&text=Great+post%21+I+can%27t+wait+for+part+2.",
        ),
        post(
            "/comments",
            form,
            "text=Use+the+%3Ccode%3E+tag%3F+No%2C+markdown+backticks+are+fine.",
        ),
        post(
            "/signup",
            form,
            "email=j.doe%40example.com&password=Tr0ub4dor%263&plan=pro",
        ),
        post(
            "/orders",
            json,
            r#"{"customer": "O'Hara", "items": [{"sku": "A-1", "qty": 2}], "note": "leave at the door; ring twice"}"#,
        ),
        post(
            "/profile",
            json,
            r#"{"bio": "I love SQL & data. Favourite query? The one that works.", "site": "https://example.com/me"}"#,
        ),
        post(
            "/events",
            json,
            r#"{"type": "page_view", "url": "https://shop.example.com/cart?step=2", "ts": 1763900000}"#,
        ),
        post(
            "/graphql",
            json,
            r#"{"query": "query Orders($first: Int) { orders(first: $first) { id total } }", "variables": {"first": 10}}"#,
        ),
        post(
            "/messages",
            json,
            r#"{"text": "Meeting at 10:30 - room 4B. Bring the Q3 numbers (and coffee)!"}"#,
        ),
        post(
            "/notes",
            "text/plain",
            "Shopping list: eggs, milk, bread. Don't forget the cat's food.",
        ),
    ]
}

fn config_for(paranoia: u8) -> String {
    format!(
        "version: 1\nserver:\n  listeners: [{{address: 127.0.0.1:0}}]\nroutes:\n  - name: all\n    match: {{paths: [/]}}\n    respond: {{status: 200, body: ok}}\n    plugins:\n      waf: {{paranoia: {paranoia}}}\n"
    )
}

/// Whether the gateway refused the raw request (403 by the WAF, or 400
/// from the HTTP layer for malformed requests).
async fn refused(gw: &Gateway, raw: &[u8]) -> (bool, Option<String>) {
    let (answer, _) = raw_bytes(gw.addr(), raw).await;
    let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let rule = if status == 403 {
        answer
            .split("\"rule\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string)
    } else {
        None
    };
    (
        status == 403 || status == 400,
        rule.or_else(|| (status == 400).then(|| "400".into())),
    )
}

async fn raw_bytes(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (String::new(), false);
    };
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // The head says enough, except for a 403's body (its rule).
                if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n")
                    && (!out.starts_with(b"HTTP/1.1 403") || out[end..].ends_with(b"}"))
                {
                    break;
                }
            }
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), true)
}

#[derive(Default, Clone, Copy)]
struct Tally {
    attacks: u32,
    caught: u32,
    benign: u32,
    false_positives: u32,
}

impl Tally {
    fn detection(&self) -> f64 {
        100.0 * self.caught as f64 / self.attacks.max(1) as f64
    }
    fn fp(&self) -> f64 {
        100.0 * self.false_positives as f64 / self.benign.max(1) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crs_corpus_detection_and_false_positives() {
    let cases = load_corpus();
    assert!(cases.len() > 3000, "the corpus loaded: {} cases", cases.len());
    let ours = benign();
    // (paranoia, family) → tally; attacks counted when the CRS rule's level ≤ ours.
    let mut table: BTreeMap<(u8, &'static str), Tally> = BTreeMap::new();
    let mut ours_fp = BTreeMap::new();
    for paranoia in 1..=4u8 {
        let gw = Gateway::start(&config_for(paranoia));
        for case in &cases {
            let t = table.entry((paranoia, case.family)).or_default();
            let (refused, rule) = refused(&gw, &case.raw).await;
            if std::env::var("WAF_DEBUG").is_ok_and(|f| f == case.family)
                && paranoia == 1
                && refused != case.attack
            {
                let line = String::from_utf8_lossy(&case.raw);
                eprintln!(
                    "{} {rule:?}: {}",
                    if case.attack { "MISSED" } else { "FP" },
                    line.chars().take(300).collect::<String>().replace("\r\n", " | ")
                );
            }
            if case.attack {
                if case.crs_paranoia <= paranoia {
                    t.attacks += 1;
                    t.caught += u32::from(refused);
                }
            } else {
                t.benign += 1;
                t.false_positives += u32::from(refused);
            }
        }
        let mut fp = 0;
        for raw in &ours {
            let (refused, rule) = refused(&gw, raw).await;
            if refused {
                fp += 1;
                if paranoia <= 2 {
                    let first = String::from_utf8_lossy(raw)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    eprintln!("benign refused at paranoia {paranoia} by {rule:?}: {first}");
                }
            }
        }
        ours_fp.insert(paranoia, fp);
    }

    println!("\nWAF against the CRS regression corpus (attacks: their CRS rule at or below the level)");
    println!(
        "{:<19} {:>4} {:>8} {:>10} {:>8} {:>8}",
        "family", "PL", "attacks", "detected%", "benign", "FP%"
    );
    for ((paranoia, family), t) in &table {
        println!(
            "{family:<19} {paranoia:>4} {:>8} {:>9.1}% {:>8} {:>7.1}%",
            t.attacks,
            t.detection(),
            t.benign,
            t.fp()
        );
    }
    println!(
        "{:<19} {:>4} {:>8} {:>10} {:>8} {:>8}",
        "our benign corpus",
        "",
        "",
        "",
        ours.len(),
        ""
    );
    for (paranoia, fp) in &ours_fp {
        println!("  paranoia {paranoia}: {fp} of {} refused", ours.len());
    }

    // Floors and ceilings, a little under what was measured (docs/waf.md):
    // a broken normalization or rule set falls through them.
    let at = |p: u8, f: &str| table[&(p, f)];
    for (family, min_detection) in [
        ("sqli", 45.0),
        ("xss", 58.0),
        ("path_traversal", 35.0),
        ("command_injection", 22.0),
    ] {
        let t = at(1, family);
        assert!(
            t.detection() >= min_detection,
            "{family} at paranoia 1: {:.1}% detected",
            t.detection()
        );
        assert!(
            at(4, family).detection() >= t.detection(),
            "{family}: more paranoia, more detection"
        );
    }
    for family in ["sqli", "xss", "path_traversal", "command_injection"] {
        let t = at(1, family);
        assert!(
            t.fp() <= 25.0,
            "{family} at paranoia 1: {:.1}% false positives",
            t.fp()
        );
    }
    assert_eq!(
        ours_fp[&1], 0,
        "no benign request of ours is refused at paranoia 1"
    );
}
