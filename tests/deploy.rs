//! deploy/: the alert rules checked and unit-tested by promtool, every file
//! linted by yamllint, the Kubernetes ConfigMap's config validated, and a
//! real Prometheus scraping a running gateway to prove every metric the
//! rules and the dashboard use exists. (.ci/run installs prometheus and
//! yamllint from Debian.) And the link order of the release binary
//! (link/hot-symbols.txt) is a list the linker can read.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::Full;
use support::*;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn tool(name: &str, args: &[&str], dir: &str) -> String {
    let out = Command::new(name)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("{name} is installed (.ci/run installs it: apt-get install prometheus yamllint): {e}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = format!("{DEPLOY}/prometheus");
    let out = tool("promtool", &["check", "rules", "portcullis-rules.yml"], &dir);
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    let out = tool("promtool", &["test", "rules", "portcullis-rules.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn deploy_files_pass_yamllint_and_the_configmap_validates() {
    tool("yamllint", &["-c", ".yamllint", "."], DEPLOY);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/portcullis-dashboard.json")).unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);

    // The config inside the ConfigMap is one the gateway accepts.
    let cm = std::fs::read_to_string(format!("{DEPLOY}/kubernetes/configmap.yaml")).unwrap();
    let start = cm.find("portcullis.yaml: |\n").unwrap() + "portcullis.yaml: |\n".len();
    let config: String = cm[start..]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let path = write_config(&config);
    let out = Command::new(bin())
        .args(["validate", "-c"])
        .arg(&path)
        .env("PORTCULLIS_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every `portcullis_…` metric name an expression uses, as stored (a
/// histogram's `_bucket` series included).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("portcullis_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        // Alert names (PortcullisX) are not metrics; file names neither.
        if name != "portcullis_" && !name.ends_with("_rules") && !name.ends_with("_dashboard") {
            out.insert(name);
        }
    }
    out
}

#[tokio::test]
async fn prometheus_scrapes_every_metric_the_rules_and_dashboard_use() {
    // A gateway with traffic of every kind the metrics count.
    let up = Upstream::start("app").await;
    let gw = Gateway::start(&config(
        &format!(
            "{}  - name: down\n    targets: [{{url: \"http://127.0.0.1:1\"}}]\n    circuit_breaker: {{failure_rate: 1.0, min_requests: 2, window: 10s, open_for: 60s, half_open_requests: 1}}\n",
            upstream("app", &up)
        ),
        "  - name: api\n    match: {paths: [/api]}\n    upstream: app\n    plugins:\n      rate_limit: {rate: 1/m, burst: 2}\n      waf: {}\n      cache: {ttl: 60s}\n      api_key: {}\n\
         \x20 - name: broken\n    match: {paths: [/broken]}\n    upstream: down\n",
        "admin: {address: \"127.0.0.1:0\", token: t}\nconsumers:\n  - name: c\n    api_keys: [{key: k}]\n",
    ));
    let client = client_h1();
    let call = |path: &str, key: bool| {
        let mut b = req("GET", &gw.url(path));
        if key {
            b = b.header("x-api-key", "k");
        }
        send(&client, b.body(Full::default()).unwrap())
    };
    call("/api/a", false).await; // 401
    call("/api/a", true).await; // 200, cache miss
    call("/api/a", true).await; // hit
    call("/api/a?q=1%27%20OR%20%271%27%3D%271", true).await; // waf
    call("/api/b", true).await; // 429
    for _ in 0..3 {
        call("/broken", false).await; // 502, then the breaker opens
    }
    gw.signal("HUP");
    eventually("the reload", || async { gw.logged("config reloaded") }).await;

    // A real Prometheus, scraping the admin API every second.
    let dir = test_dir("prometheus");
    let admin = gw.admin_url("");
    let target = admin.trim_start_matches("http://").trim_end_matches('/');
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: portcullis\n    authorization: {{credentials: t}}\n    static_configs: [{{targets: [\"{target}\"]}}]\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (.ci/run installs it)");
    let names_url = format!("http://127.0.0.1:{port}/api/v1/label/__name__/values");
    let mut wanted =
        metric_names(&std::fs::read_to_string(format!("{DEPLOY}/prometheus/portcullis-rules.yml")).unwrap());
    wanted.extend(metric_names(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/portcullis-dashboard.json")).unwrap(),
    ));
    assert!(wanted.len() >= 10, "{wanted:?}");
    let mut missing = wanted.clone();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(resp) =
            tokio::time::timeout(Duration::from_secs(2), client.get(names_url.parse().unwrap())).await
        else {
            continue;
        };
        let Ok(resp) = resp else { continue };
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let have: BTreeSet<String> = v["data"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        missing = wanted.difference(&have).cloned().collect();
        if missing.is_empty() {
            break;
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        missing.is_empty(),
        "Prometheus never saw {missing:?} (wanted {wanted:?})"
    );
}

/// build.rs hands link/hot-symbols.txt to lld as is. lld skips a name the
/// binary lacks without a word, so a line that is not one symbol name
/// (mangled, as in the binary) would be lost silently: every line but
/// comments must be one, listed once, and the profile it came from must
/// have been of the proxy.
#[test]
fn link_order_lists_each_function_once_by_its_symbol_name() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/link/hot-symbols.txt")).unwrap();
    let names: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(names.len() >= 50, "only {} functions listed", names.len());
    let mut seen = BTreeSet::new();
    for name in &names {
        // Rust's mangled names (legacy `_ZN..E`, v0 `_R..`) and C's (mimalloc)
        // are made of these; a space or a demangled `::` is not.
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_$.".contains(&b)),
            "not one symbol name: {name:?}"
        );
        assert!(seen.insert(*name), "listed twice: {name}");
    }
    let hottest = &names[..20];
    for part in [
        "10portcullis5proxy7handler7process",
        "10portcullis8upstream4pool4Pool4send",
    ] {
        assert!(
            hottest.iter().any(|n| n.contains(part)),
            "{part} is not among the 20 hottest"
        );
    }
}
