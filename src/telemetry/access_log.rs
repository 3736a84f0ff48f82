//! The JSON access log: one line per request, written off the hot path.
//!
//! A request hands its finished [`Entry`] to a bounded queue without
//! waiting; a writer thread formats and writes the lines in batches. When the
//! writer falls behind (a slow disk, a blocked stdout) the queue fills and
//! new lines are dropped and counted in `portcullis_access_log_dropped_total`:
//! requests are never slowed by logging.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use http::uri::Authority;
use http::{HeaderValue, Method, Uri};

/// Lines waiting to be written; beyond this, new ones are dropped.
const QUEUE: usize = 32 * 1024;

/// What one request left behind.
pub struct Entry {
    pub time: SystemTime,
    pub request_id: HeaderValue,
    /// The `traceparent` sent upstream (`00-<trace id>-<span id>-<flags>`).
    pub traceparent: Option<HeaderValue>,
    pub client_ip: IpAddr,
    pub method: Method,
    pub host: Option<HeaderValue>,
    pub uri: Uri,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream_time: Option<Duration>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub target: Option<Authority>,
    pub consumer: Option<Arc<str>>,
}

/// The sending side of one log destination.
pub struct AccessLog {
    pub path: String,
    tx: SyncSender<Entry>,
}

impl AccessLog {
    /// Opens `path` (`stdout`, or a file appended to) and starts its writer.
    pub fn open(path: &str) -> Result<AccessLog, String> {
        let out: Box<dyn Write + Send> = if path == "stdout" {
            Box::new(std::io::stdout())
        } else if path == "stderr" {
            Box::new(std::io::stderr())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open `{path}`: {e}"))?,
            )
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, out))
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(AccessLog {
            path: path.to_string(),
            tx,
        })
    }

    /// Queues a line; never blocks.
    pub fn log(&self, entry: Entry) {
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                super::metrics().access_log_dropped.inc();
            }
        }
    }
}

/// Writes lines until every sender is gone, flushing whenever the queue runs dry.
fn writer(rx: Receiver<Entry>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(512);
    while let Ok(entry) = rx.recv() {
        let mut next = Some(entry);
        while let Some(e) = next {
            line.clear();
            format_line(&e, &mut line);
            if out.write_all(line.as_bytes()).is_err() {
                super::metrics().access_log_dropped.inc();
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn format_line(e: &Entry, out: &mut String) {
    out.push_str("{\"time\":\"");
    rfc3339(e.time, out);
    out.push_str("\",\"request_id\":");
    json_str(e.request_id.to_str().unwrap_or(""), out);
    out.push_str(",\"trace_id\":");
    match e
        .traceparent
        .as_ref()
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.get(3..35))
    {
        Some(id) => json_str(id, out),
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"client_ip\":\"{}\",\"method\":", e.client_ip);
    json_str(e.method.as_str(), out);
    out.push_str(",\"host\":");
    opt_str(e.host.as_ref().and_then(|h| h.to_str().ok()), out);
    // The path only: query strings often carry secrets.
    out.push_str(",\"path\":");
    json_str(e.uri.path(), out);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream_time_ms\":",
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1000.0
    );
    match e.upstream_time {
        Some(t) => {
            let _ = write!(out, "{:.3}", t.as_secs_f64() * 1000.0);
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"route\":");
    opt_str(e.route.as_deref(), out);
    out.push_str(",\"upstream\":");
    opt_str(e.upstream.as_deref(), out);
    out.push_str(",\"target\":");
    opt_str(e.target.as_ref().map(|t| t.as_str()), out);
    out.push_str(",\"consumer\":");
    opt_str(e.consumer.as_deref(), out);
    out.push_str("}\n");
}

fn json_str(s: &str, out: &mut String) {
    // Serializing a str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn opt_str(s: Option<&str>, out: &mut String) {
    match s {
        Some(s) => json_str(s, out),
        None => out.push_str("null"),
    }
}

/// `2026-11-23T07:55:01.123Z`.
fn rfc3339(t: SystemTime, out: &mut String) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let mut s = String::new();
        rfc3339(
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_420_501_123),
            &mut s,
        );
        assert_eq!(s, "2026-11-23T07:55:01.123Z");
    }

    #[test]
    fn a_line_is_one_json_object() {
        let e = Entry {
            time: SystemTime::now(),
            request_id: HeaderValue::from_static("abc"),
            traceparent: Some(HeaderValue::from_static(
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )),
            client_ip: "10.0.0.1".parse().unwrap(),
            method: Method::GET,
            host: Some(HeaderValue::from_static("api.example.com")),
            uri: "/users/7?token=secret".parse().unwrap(),
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            duration: Duration::from_micros(1500),
            upstream_time: None,
            route: Some("users\"api".into()),
            upstream: None,
            target: None,
            consumer: None,
        };
        let mut line = String::new();
        format_line(&e, &mut line);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["path"], "/users/7");
        assert_eq!(v["route"], "users\"api");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["upstream"].is_null());
        assert!(!line.contains("secret"));
    }
}
