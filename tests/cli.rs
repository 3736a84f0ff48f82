//! The command line: `validate` output and exit codes, start-up failures.

mod support;

use std::process::Command;

use support::*;

fn validate(yaml: &str) -> (i32, String, String) {
    let path = write_config(yaml);
    let out = Command::new(bin())
        .args(["validate", "-c"])
        .arg(&path)
        .env_remove("NOPE")
        .envs([
            ("PORTCULLIS_ADMIN_TOKEN", "t"),
            ("JWT_SECRET", "s"),
            ("MOBILE_KEY", "k"),
            ("MOBILE_HMAC_SECRET", "h"),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let p = path.display().to_string();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).replace(&p, "FILE"),
        String::from_utf8_lossy(&out.stderr).replace(&p, "FILE"),
    )
}

#[test]
fn every_example_validates() {
    let mut n = 0;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let plugins = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plugins");
    let entries = std::fs::read_dir(root)
        .unwrap()
        .chain(std::fs::read_dir(plugins).unwrap());
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "json") {
            let out = Command::new(bin())
                .args(["validate", "-c"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 20, "{n} examples");
}

#[test]
fn validate_lists_every_error_with_file_line_and_path() {
    let yaml = "version: 1\n\
                upstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9001\"}]\n    load_balancing: round_robbin\n\
                routes:\n  - name: a\n    match: {paths: [\"/a\"]}\n    upstrem: users\n\
                \x20 - name: b\n    match: {paths: [\"/b\"]}\n    upstream: users\n    timeout: 5\n";
    let (code, _, err) = validate(yaml);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "FILE:5: upstreams[0].load_balancing: unknown value `round_robbin` (did you mean `round_robin`?)"
        ),
        "{err}"
    );
    assert!(
        err.contains("FILE:9: routes[0].upstrem: unknown key `upstrem` (did you mean `upstream`?)"),
        "{err}"
    );
    assert!(
        err.contains("FILE:13: routes[1].timeout: invalid duration"),
        "{err}"
    );
    assert!(err.trim_end().ends_with("3 errors"), "{err}");
}

#[test]
fn fields_that_do_not_read_and_checks_across_fields_are_reported_together() {
    let yaml = "version: 1\n\
                server:\n  listeners: [{name: a, address: \"127.0.0.1:9001\"}, {name: a, address: \"127.0.0.1:9002\"}]\n  limits: {idle_timeout: 10}\n\
                upstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9001\"}]\n    load_balancing: consistent_hash\n    hash_on: 5\n\
                routes:\n  - name: a\n    match: {paths: [\"/a\"], methodz: [GET]}\n    upstream: user\n\
                \x20 - name: a\n    match: {paths: [\"/b\"]}\n    upstream: [users]\n";
    let (code, _, err) = validate(yaml);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "FILE:3: server.listeners[1].name: duplicate listener name `a`\n\
         FILE:4: server.limits.idle_timeout: invalid duration \"10\": the unit must be ms, s, m or h\n\
         FILE:9: upstreams[0].hash_on: `5`: expected ip, consumer, header:NAME or cookie:NAME\n\
         FILE:12: routes[0].match.methodz: unknown key `methodz` (did you mean `methods`?)\n\
         FILE:13: routes[0].upstream: unknown upstream `user` (did you mean `users`?)\n\
         FILE:14: routes[1].name: duplicate route name `a`\n\
         FILE:16: routes[1].upstream: expected a scalar, found a list\n\
         7 errors\n",
        "what a dropped field causes (hash_on required, a route without upstream) is not reported"
    );
}

#[test]
fn one_round_names_what_reading_checking_and_compiling_find() {
    // A listener that does not read loses the `server` section, which
    // nothing else refers to: the other sections are still checked and
    // compiled. A target port past 65535 is an error, not port 80.
    let yaml = "version: 1\n\
                server:\n  listeners: [{name: a, address: \"localhost:9001\"}]\n\
                upstreams:\n  - name: u\n    targets: [{url: \"http://127.0.0.1:70000\", weight: 0}]\n\
                routes:\n  - name: a\n    match: {paths: [\"/a/{x}/{x}\"], methods: [get]}\n    upstream: u\n";
    let (code, _, err) = validate(yaml);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "FILE:3: server.listeners[0].address: `localhost:9001` is not IP:PORT (e.g. 0.0.0.0:8080, 127.0.0.1:9901 or [::]:8443; host names are not looked up)\n\
         FILE:6: upstreams[0].targets[0].url: `http://127.0.0.1:70000`: the port must be a number from 1 to 65535\n\
         FILE:6: upstreams[0].targets[0].weight: must be between 1 and 10000\n\
         FILE:9: routes[0].match.methods[0]: `get` is not a known HTTP method (write it in capitals, e.g. GET)\n\
         FILE:9: routes[0].match.paths[0]: capture `x` appears twice\n\
         5 errors\n"
    );
}

#[test]
fn semantic_errors_and_unbuilt_capabilities_are_named() {
    let yaml = "version: 1\n\
                upstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9001\"}]\n\
                routes:\n  - name: a\n    match: {paths: [\"/a\"], methods: [FETCH]}\n    upstream: user\n    plugins:\n      cache: {ttl: 30s}\n\
                \x20 - name: a\n    match: {paths: [\"~ ([\"]}\n    upstream: users\n\
                plugins:\n  compression: {}\n";
    let (code, _, err) = validate(yaml);
    assert_eq!(code, 1);
    for want in [
        "routes[0].upstream: unknown upstream `user` (did you mean `users`?)",
        "routes[0].match.methods[0]: `FETCH` is not a known HTTP method",
        "routes[1].name: duplicate route name `a`",
        // Found by compiling the routes, in the same round.
        "routes[1].match.paths[0]: invalid regex: unclosed character class",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // The regex crate's three-line message is one line (one error a line,
    // SPEC section 8).
    let (code, _, err) = validate(
        "version: 1\nroutes:\n  - name: a\n    match: {paths: [\"~ ([\"]}\n    respond: {status: 200}\n",
    );
    assert_eq!(code, 1);
    assert_eq!(
        err, "FILE:4: routes[0].match.paths[0]: invalid regex: unclosed character class\n1 error\n",
        "{err}"
    );
    // Plugin options are checked once the structure is sound.
    let (code, _, err) = validate("version: 1\nplugins:\n  compression: {algorithms: [zstd]}\n");
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "FILE:3: plugins.compression.algorithms[0]: unknown algorithm `zstd` (expected br or gzip)"
        ),
        "{err}"
    );
}

#[test]
fn env_substitution() {
    let yaml = "version: 1\nserver:\n  listeners: [{name: p, address: \"127.0.0.1:${NOPE}\"}]\n";
    let (code, _, err) = validate(yaml);
    assert_eq!(code, 1);
    assert!(
        err.contains("FILE:3: server.listeners[0].address: environment variable `NOPE` is not set"),
        "{err}"
    );
    // Said once: not also as an address that does not read.
    assert!(err.ends_with("\n1 error\n"), "{err}");
    let yaml = "version: 1\nserver:\n  listeners: [{name: p, address: \"127.0.0.1:${NOPE:-8099}\"}]\n";
    let (code, out, err) = validate(yaml);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "FILE: ok (0 routes, 0 upstreams)\n");
}

#[test]
fn the_whole_spec_schema_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spec-full.yaml"
    ))
    .unwrap();
    let (code, _, err) = validate(&text);
    assert_eq!(code, 1);
    // Every capability is built: what is left are the files the SPEC
    // example names (certificates, a descriptor set), absent here.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("FILE")).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l.contains("cannot read"), "{l}");
    }
    assert!(
        err.contains("grpc_transcode.descriptor_set: cannot read protos/inventory.pb"),
        "{err}"
    );
}

#[test]
fn run_with_a_bad_config_exits_1_and_serves_nothing() {
    let path = write_config(
        "version: 1\nserver:\n  listeners: [{name: p, address: \"127.0.0.1:18931\"}]\nroutes:\n  - name: r\n    upstream: missing\n",
    );
    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("routes[0].upstream: unknown upstream `missing`"));
    assert!(std::net::TcpStream::connect("127.0.0.1:18931").is_err());
    let out = Command::new(bin())
        .args(["run", "-c", "/nonexistent/portcullis.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read file"));
}

#[test]
fn a_taken_port_is_a_one_line_start_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = write_config(&format!(
        "version: 1\nserver:\n  listeners: [{{name: public, address: \"{addr}\"}}]\n"
    ));
    let out = Command::new(bin())
        .args(["run", "--log-format", "text", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("listener `public`: cannot bind {addr}")),
        "{err}"
    );
}

#[test]
fn version_prints() {
    let out = Command::new(bin()).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("portcullis 0.1.0"));
    assert!(
        text.contains("grpc-transcode") && text.contains("compression"),
        "{text}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_cli_definition() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef portcullis"),
        ("fish", "complete -c portcullis"),
    ] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(marker), "{shell}: {text}");
        for sub in ["run", "validate", "completions"] {
            assert!(text.contains(sub), "{shell} completes {sub}");
        }
    }
    // An unknown shell: usage on stderr, exit 2.
    let out = Command::new(bin())
        .args(["completions", "powershell7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));

    let out = Command::new(bin()).arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH portcullis"),
        "{roff}"
    );
    assert!(roff.contains("validate"));
}

#[test]
fn the_schema_describes_every_example() {
    let out = Command::new(bin()).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    // The copy in docs/ (what editors point at) is the one the binary prints.
    let committed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/portcullis.schema.json"
    ))
    .unwrap();
    assert!(
        committed == out.stdout,
        "docs/portcullis.schema.json is stale: run `cargo run -- schema > docs/portcullis.schema.json`"
    );
    let validator = jsonschema::validator_for(&schema).unwrap();
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
            .unwrap()
            .chain(std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plugins")).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
    files.push(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spec-full.yaml").into());
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let node = portcullis::config::parse_document(&text, "x").unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&portcullis::config::emit::to_json(&node, false)).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
    // The reference in docs/ is generated from the same model.
    let out = Command::new(bin())
        .args(["schema", "--markdown"])
        .output()
        .unwrap();
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config-reference.md")).unwrap();
    assert!(
        committed == out.stdout,
        "docs/config-reference.md is stale: run `cargo run -- schema --markdown > docs/config-reference.md`"
    );
    let reference = String::from_utf8_lossy(&out.stdout);
    for section in [
        "## RouteConfig",
        "At `routes[]`.",
        "`max_request_body_bytes`",
        "## RateLimitPolicy",
    ] {
        assert!(reference.contains(section), "{section}");
    }

    // And it refuses what the loader refuses: an unknown key, a bad duration.
    let bad: serde_json::Value = serde_json::json!({"version": 1, "routes": [{"name": "a", "upstrem": "x"}]});
    assert!(!validator.is_valid(&bad));
    let bad = serde_json::json!({"version": 1, "server": {"shutdown_timeout": "ten seconds"}});
    assert!(!validator.is_valid(&bad));
    let ok = serde_json::json!({"version": 1, "server": {"shutdown_timeout": "${GRACE}"}});
    assert!(
        validator.is_valid(&ok),
        "${{ENV}} references are accepted anywhere a string is"
    );
}

/// Runs `portcullis explain` on `yaml`: exit code, stdout.
fn explain(yaml: &str, args: &[&str]) -> (i32, String) {
    let path = write_config(yaml);
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_says_which_route_and_why_the_others_did_not() {
    let yaml = "version: 1\n\
        upstreams:\n  - name: users\n    targets: [{url: \"http://127.0.0.1:9001\"}]\n\
        \x20 - name: admin\n    targets: [{url: \"http://127.0.0.1:9002\"}]\n\
        routes:\n\
        \x20 - name: health\n    match: {paths: [\"= /api/users/health\"]}\n    respond: {body: ok}\n\
        \x20 - name: internal\n    match: {paths: [/api/users], hosts: [internal.example.com]}\n    upstream: admin\n\
        \x20 - name: writes\n    match: {paths: [\"/api/users/{id}\"], methods: [PUT, DELETE]}\n    upstream: admin\n\
        \x20 - name: one-user\n    match: {paths: [\"/api/users/{id}\"]}\n    upstream: users\n    rewrite: /v2/users/{id}\n    plugins: {rate_limit: {rate: 5/s}, api_key: {}}\n\
        \x20 - name: users\n    match: {paths: [/api/users]}\n    upstream: users\n    strip_prefix: /api\n\
        \x20 - name: legacy\n    match: {paths: [\"~ ^/api/users/[0-9]+$\"]}\n    upstream: users\n";

    let (code, out) = explain(yaml, &["GET", "http://api.example.com/api/users/7?full=1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("route     one-user (routes[3])"), "{out}");
    assert!(out.contains("captures id=7"), "{out}");
    // The more specific candidates come first, each with why it lost.
    let writes = out.find("writes").unwrap();
    let chosen = out.find("* one-user").unwrap();
    assert!(writes < chosen, "{out}");
    assert!(out.contains("it takes PUT, DELETE only"), "{out}");
    assert!(out.contains("its hosts do not include api.example.com"), "{out}");
    assert!(
        out.contains("it matches too, but a more specific route wins"),
        "{out}"
    );
    // Plugins in phase order, whatever the file order; the rewritten path.
    assert!(out.contains("plugins   api_key → rate_limit"), "{out}");
    assert!(out.contains("upstream path /v2/users/7?full=1"), "{out}");

    // The host changes the answer.
    let (_, out) = explain(yaml, &["GET", "http://internal.example.com:8080/api/users/7"]);
    assert!(out.contains("* one-user"), "a template beats a prefix: {out}");
    let (_, out) = explain(yaml, &["GET", "http://internal.example.com/api/users"]);
    assert!(out.contains("route     internal"), "{out}");

    // JSON for scripts.
    let (code, out) = explain(yaml, &["DELETE", "/api/users/7", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The keys SPEC section 1 names, at the top.
    assert_eq!(v["route"], "writes");
    assert_eq!(v["upstream"], "admin");
    assert_eq!(v["upstream_path"], "/api/users/7");
    assert_eq!(v["plugins"], serde_json::json!([]));
    assert_eq!(v["request"]["method"], "DELETE");
    let (_, out) = explain(yaml, &["GET", "/api/users/7", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"], "one-user");
    assert_eq!(v["plugins"], serde_json::json!(["api_key", "rate_limit"]));
    assert_eq!(v["upstream_path"], "/v2/users/7");
    assert_eq!(v["match"]["captures"]["id"], "7");
    let (code, out) = explain(yaml, &["GET", "/api/orders/7", "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["route"], serde_json::Value::Null);
    assert_eq!(v["upstream"], serde_json::Value::Null);

    // No route: said so, with the nearest ones; exit 1.
    let (code, out) = explain(yaml, &["GET", "/api/orders/7"]);
    assert_eq!(code, 1);
    assert!(out.contains("route     no route matches: 404"), "{out}");
    assert!(out.contains("nearest routes:"), "{out}");
    let (code, out) = explain(yaml, &["GET", "/api/%2e%2e/%2e%2e/etc"]);
    assert_eq!(code, 1);
    assert!(out.contains("400 urn:portcullis:error:invalid-path"), "{out}");
    // A header in `-H` that is not one.
    let path = write_config(yaml);
    let out = Command::new(bin())
        .args(["explain", "-c"])
        .arg(&path)
        .args(["GET", "/", "-H", "nocolon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a header"));
}

#[test]
fn output_to_a_reader_that_stopped_is_no_panic() {
    // `| head`: the read end is gone before anything is written.
    for args in [
        &["completions", "bash"][..],
        &["schema"],
        &["schema", "--markdown"],
        &["man"],
        &["version"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(bin())
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

#[test]
fn version_is_a_command_and_a_flag() {
    let full = Command::new(bin()).arg("version").output().unwrap();
    let full = String::from_utf8_lossy(&full.stdout).into_owned();
    let first = full.lines().next().unwrap_or_default().to_string();
    assert!(first.starts_with("portcullis "), "{full}");
    assert!(full.contains("\nfeatures: "), "{full}");
    for flag in ["--version", "-V"] {
        let out = Command::new(bin()).arg(flag).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), first, "{flag}");
    }
}

#[test]
fn a_log_filter_that_does_not_read_is_refused() {
    let path = write_config("version: 1\n");
    let out = Command::new(bin())
        .args(["validate", "--log-level", "portcullis=loud", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("invalid value 'portcullis=loud' for '--log-level"),
        "{err}"
    );
}
