//! `portcullis demo` as a newcomer meets it: every command of the printed
//! tour run as printed (with curl, through a shell), each answering the
//! status the tour says; a taken port; Ctrl-C.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Demo {
    child: Child,
    tour: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the demo and reads its tour, up to "Ctrl-C stops the demo."
fn start(port: u16) -> Demo {
    let mut child = Command::new(bin())
        .args(["demo", "--port", &port.to_string(), "--log-level", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut tour = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("Ctrl-C stops the demo");
        tour.push(line);
        if done {
            break;
        }
    }
    Demo { child, tour }
}

/// The tour's steps: (command, expected status).
fn steps(tour: &[String]) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    let mut lines = tour.iter();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        let Some((n, cmd)) = t.split_once(". ") else {
            continue;
        };
        if n.parse::<u32>().is_err() {
            continue;
        }
        let expect = lines.next().unwrap().trim_start();
        let status: u16 = expect
            .strip_prefix("# ")
            .and_then(|e| e.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("step {n} says no status: {expect}"));
        out.push((cmd.to_string(), status));
    }
    out
}

/// The last HTTP status in curl's output: a status line or a `%{http_code}` line.
fn last_status(output: &str) -> Option<u16> {
    output.lines().rev().find_map(|l| {
        let l = l.trim();
        if l.starts_with("HTTP/") {
            l.split_whitespace().nth(1)?.parse().ok()
        } else if l.len() == 3 {
            l.parse().ok()
        } else {
            None
        }
    })
}

#[test]
fn every_tour_command_answers_as_the_tour_says() {
    let port = free_port();
    let started = Instant::now();
    let demo = start(port);
    // The tour is printed once the gateway accepts connections: a newcomer
    // may paste its first command at once.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the gateway listens once the tour is printed");
    let tour_text = demo.tour.join("\n");
    assert!(
        tour_text.contains(&format!("Portcullis demo on http://127.0.0.1:{port}")),
        "{tour_text}"
    );
    assert!(tour_text.contains("API key:   demo-key"), "{tour_text}");
    let steps = steps(&demo.tour);
    assert!(steps.len() >= 10, "{tour_text}");
    // The gateway is up once the tour is printed (well within a test's patience).
    assert!(started.elapsed() < Duration::from_secs(20));
    for (i, (cmd, want)) in steps.iter().enumerate() {
        let out = Command::new("bash").args(["-c", cmd]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(last_status(&text), Some(*want), "step {}: {cmd}\n{text}", i + 1);
        // What each step says to look for.
        let look = |needle: &str| assert!(text.contains(needle), "step {}: no {needle:?} in\n{text}", i + 1);
        match i + 1 {
            1 => look("application/problem+json"),
            3 => {
                look("application/problem+json");
                look("www-authenticate");
            }
            4 => {
                look("\"user\":{");
                look("\"orders\":[");
                look("\"recs\":[");
            }
            5 => look("200\n200\n200\n200\n200\n429"),
            6 => look("x-cache: HIT"),
            7 => look("502\n"),
            8 => look("\"displayName\":\"Espresso beans, 1 kg\""),
            9 => look("urn:portcullis:error:grpc-not-found"),
            10 => look("portcullis_cache_requests_total{route=\"catalog\",result=\"hit\"} 1"),
            _ => {}
        }
    }
}

#[test]
fn a_taken_port_is_named_and_ctrl_c_exits_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(bin())
        .args(["demo", "--port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    drop(taken);

    let mut demo = start(free_port());
    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
}
