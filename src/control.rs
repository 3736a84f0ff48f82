//! The control plane: the one place that changes the config in force.
//!
//! Every change (the file on disk, `SIGHUP`, the admin API) goes through
//! [`Control::apply`]: the new document is validated and compiled in full
//! aside, then swapped in with one pointer store. Requests in flight finish
//! on the runtime they started with; unchanged upstream targets keep their
//! connection pools. An invalid change is refused with every error and
//! nothing of it is applied. Changes are serialized by one lock.
//!
//! The document kept here is the config as written, `${ENV}` references
//! unexpanded: that is what the admin API edits and what `admin.persist`
//! writes back, so secrets held in the environment never land in the file.

pub mod admin;
pub mod watch;

use std::hash::Hasher;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::yaml::{Node, NodeKind};
use crate::config::{self, AdminConfig, ConfigError, ConfigErrors, Loaded, emit};
use crate::snapshot::{self, RuntimeHandle};

/// The config in force, as the control plane sees it.
pub struct State {
    /// As written (`${ENV}` unexpanded).
    pub raw: Node,
    /// Loaded: typed, substituted, validated.
    pub loaded: Loaded,
    /// A hash of the document, as `GET /status` reports it.
    pub version: String,
}

/// Where a change came from (for logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    File,
    Signal,
    Admin,
}

/// A new document on its way in.
struct Change<'a> {
    /// As written (`${ENV}` unexpanded).
    raw: Node,
    version: String,
    /// Where it came from, for error messages (a file, "request body").
    source: &'a str,
    origin: Origin,
    /// The text to write back to the config file first, if persisting.
    persist: Option<String>,
    /// When its handling began (for the reload time logged).
    started: Instant,
}

/// Why a change was not applied.
#[derive(Debug)]
pub enum ApplyError {
    /// The change is invalid: every error, nothing applied.
    Invalid(ConfigErrors),
    /// It could not be written back to the config file, so it was not applied.
    Persist(String),
}

pub struct Control {
    runtime: RuntimeHandle,
    state: tokio::sync::Mutex<State>,
    /// A copy of the admin section in force, readable without the lock.
    admin: arc_swap::ArcSwapOption<AdminConfig>,
    file: Option<PathBuf>,
    started: Instant,
    /// The runtime the data plane runs on: a new config's background work
    /// (key set downloads) is started there.
    tokio: Option<tokio::runtime::Handle>,
    /// The errors of the last refused change, until one is applied. The
    /// file watch sees every change in the config's directory (other files,
    /// a log written there): a file still refused for the same errors is
    /// not logged nor counted again.
    last_refusal: std::sync::Mutex<Option<String>>,
}

/// A document's version: a hash of its text.
pub fn version_of(text: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // In pieces: a document of megabytes takes a millisecond or more to hash.
    for chunk in text.as_bytes().chunks(16 * 1024) {
        h.write(chunk);
        crate::yielding::point();
    }
    format!("{:016x}", h.finish())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Control {
    pub fn new(runtime: RuntimeHandle, state: State, file: Option<PathBuf>) -> Control {
        Control {
            runtime,
            admin: arc_swap::ArcSwapOption::from(state.loaded.config.admin.clone().map(Arc::new)),
            state: tokio::sync::Mutex::new(state),
            file,
            started: Instant::now(),
            tokio: tokio::runtime::Handle::try_current().ok(),
            last_refusal: std::sync::Mutex::new(None),
        }
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn admin(&self) -> Option<Arc<AdminConfig>> {
        self.admin.load_full()
    }

    pub async fn state(&self) -> tokio::sync::MutexGuard<'_, State> {
        self.state.lock().await
    }

    /// Runs `f` with the state locked, on a thread of its own that yields
    /// to request threads (see [`crate::yielding`]): validating and compiling
    /// a large config takes a tenth of a second of CPU, which must neither
    /// block a worker thread nor hold a core while requests wait for it.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Control, &mut State) -> T + Send + 'static,
    ) -> T {
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("config-change".into())
            .spawn(move || {
                crate::yielding::background();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let mut state = this.state.blocking_lock();
                    f(&this, &mut state)
                }));
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            panic!("cannot start a thread for a config change: {e}");
        }
        match rx.await {
            Ok(Ok(t)) => t,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("the config change thread ended without an answer"),
        }
    }

    /// Whether admin changes are written back to the file
    /// (`admin.persist`, default on when the config came from a file).
    fn persist(&self, state: &State) -> bool {
        self.file.is_some()
            && state
                .loaded
                .config
                .admin
                .as_ref()
                .and_then(|a| a.persist)
                .unwrap_or(true)
    }

    /// Re-reads the config file; `Ok(None)` when a change on disk left its
    /// text as the config already in force. `SIGHUP` always applies it, so
    /// files the config names (certificates, keys) are read again.
    pub fn reload_file(&self, state: &mut State, origin: Origin) -> Result<Option<String>, ApplyError> {
        let started = Instant::now();
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let text = config::read_file(path).map_err(|e| self.refused(origin, e))?;
        let version = version_of(&text);
        if version == state.version && matches!(origin, Origin::File) {
            return Ok(None);
        }
        let source = path.display().to_string();
        let raw = config::parse_document(&text, &source).map_err(|e| self.refused(origin, e))?;
        self.swap(
            state,
            Change {
                raw,
                version,
                source: &source,
                origin,
                persist: None,
                started,
            },
        )
        .map(Some)
    }

    /// Applies a new whole document (`PUT /config`).
    pub fn replace(&self, state: &mut State, text: &str) -> Result<String, ApplyError> {
        let started = Instant::now();
        let raw = config::parse_document(text, "request body").map_err(|e| self.refused(Origin::Admin, e))?;
        self.apply_admin_since(state, raw, "request body", started)
    }

    /// Validates a document without applying it (`POST /config/validate`).
    pub fn check(&self, text: &str, current: &State) -> Result<(), ConfigErrors> {
        let raw = config::parse_document(text, "request body")?;
        self.prepare(current, &raw, "request body", false).map(|_| ())
    }

    /// Applies `raw` as an admin change, written back to the file when persisting.
    pub fn apply_admin(&self, state: &mut State, raw: Node, source: &str) -> Result<String, ApplyError> {
        self.apply_admin_since(state, raw, source, Instant::now())
    }

    /// [`Self::apply_admin`] for a change whose handling began at `started`.
    fn apply_admin_since(
        &self,
        state: &mut State,
        raw: Node,
        source: &str,
        started: Instant,
    ) -> Result<String, ApplyError> {
        let text = if self.file.as_deref().is_some_and(is_json) {
            emit::to_json(&raw, false)
        } else {
            emit::to_yaml(&raw)
        };
        let version = version_of(&text);
        let persist = self.persist(state).then_some(text);
        self.swap(
            state,
            Change {
                raw,
                version,
                source,
                origin: Origin::Admin,
                persist,
                started,
            },
        )
    }

    /// Loads, validates and compiles `raw` against the state in force.
    /// `apply`: compile to be put in force (outputs opened, unchanged
    /// targets carried over); else only check it (`snapshot::check`).
    fn prepare(
        &self,
        state: &State,
        raw: &Node,
        source: &str,
        apply: bool,
    ) -> Result<(Loaded, snapshot::Runtime), ConfigErrors> {
        let loaded = config::load_document(raw, source, &env)?;
        let restart = restart_only_changes(&state.loaded, &loaded);
        if !restart.is_empty() {
            return Err(loaded.locate(restart));
        }
        let runtime = if apply {
            snapshot::compile(&loaded.config, Some(&self.runtime.load()))
        } else {
            snapshot::check(&loaded.config)
        };
        let runtime = runtime.map_err(|e| loaded.locate(e))?;
        Ok((loaded, runtime))
    }

    fn swap(&self, state: &mut State, change: Change<'_>) -> Result<String, ApplyError> {
        let Change {
            raw,
            version,
            source,
            origin,
            persist,
            started,
        } = change;
        let (loaded, runtime) = self
            .prepare(state, &raw, source, true)
            .map_err(|e| self.refused(origin, e))?;
        if let (Some(text), Some(path)) = (persist, &self.file) {
            write_atomically(path, text.as_bytes()).map_err(|e| {
                crate::telemetry::metrics().config_reload(false);
                tracing::error!(file = %path.display(), error = %e, "config change not applied: cannot write the config file");
                ApplyError::Persist(format!("cannot write {}: {e}", path.display()))
            })?;
        }
        let (routes, upstreams) = (runtime.routes.len(), runtime.upstreams.len());
        crate::telemetry::on_runtime(&runtime);
        if let Some(tokio) = &self.tokio {
            let _in_runtime = tokio.enter();
            runtime.start();
        }
        let old = self.runtime.swap(Arc::new(runtime));
        self.admin.store(loaded.config.admin.clone().map(Arc::new));
        let replaced = std::mem::replace(
            state,
            State {
                raw,
                loaded,
                version: version.clone(),
            },
        );
        replaced.loaded.release();
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = None;
        crate::telemetry::metrics().config_reload(true);
        let elapsed = started.elapsed();
        retire(old);
        tracing::info!(
            ?origin,
            version = %version,
            routes,
            upstreams,
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "config reloaded"
        );
        Ok(version)
    }

    fn refused(&self, origin: Origin, errors: ConfigErrors) -> ApplyError {
        let text = errors.to_string();
        let mut last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner());
        let repeated = last.as_deref() == Some(text.as_str());
        if !(repeated && origin == Origin::File) {
            crate::telemetry::metrics().config_reload(false);
            tracing::warn!(
                ?origin,
                errors = errors.errors.len(),
                "config change refused; the config in force keeps serving:\n{text}"
            );
        }
        *last = Some(text);
        ApplyError::Invalid(errors)
    }
}

/// Frees a runtime taken out of force once no request holds it any more,
/// on a background thread. Freeing a runtime of thousands of routes takes
/// milliseconds; done by whichever request let go of it last, it would
/// stall a worker and every request on it.
fn retire(old: Arc<snapshot::Runtime>) {
    static RUNTIMES: Reaper<snapshot::Runtime> = Reaper::new();
    RUNTIMES.retire(old);
}

/// A background thread (started at the first use) that drops what it is
/// given once it holds the last reference.
struct Reaper<T> {
    tx: std::sync::OnceLock<std::sync::mpsc::Sender<Arc<T>>>,
}

impl<T: Send + Sync + 'static> Reaper<T> {
    /// How often retired values still held elsewhere are checked again.
    const CHECK: std::time::Duration = std::time::Duration::from_millis(20);

    const fn new() -> Self {
        Reaper {
            tx: std::sync::OnceLock::new(),
        }
    }

    fn retire(&self, old: Arc<T>) {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // If no thread can be started, sending fails and values are
            // freed where they are let go.
            let _ = std::thread::Builder::new()
                .name("config-retire".into())
                .spawn(move || Self::run(&rx));
            tx
        });
        if let Err(std::sync::mpsc::SendError(old)) = tx.send(old) {
            drop(old);
        }
    }

    fn run(rx: &std::sync::mpsc::Receiver<Arc<T>>) {
        use std::sync::mpsc::RecvTimeoutError;
        crate::yielding::background();
        let mut retired = Vec::new();
        loop {
            // Asleep while nothing waits; polled only while something does.
            let next = if retired.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(Self::CHECK)
            };
            match next {
                Ok(old) => retired.push(old),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Out of the handle, nobody can take a new reference: a value
            // held only here is dropped, and freed, here.
            retired.retain(|old| Arc::strong_count(old) > 1);
        }
    }
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// Parts of the config a running gateway cannot change in place: its
/// listening sockets. Changing them needs a restart; the change is refused
/// whole rather than applied in part.
fn restart_only_changes(current: &Loaded, new: &Loaded) -> Vec<config::FieldError> {
    let mut errors = Vec::new();
    if current.config.server.listeners != new.config.server.listeners {
        errors.push(config::FieldError::new(
            "server.listeners",
            "listeners cannot change while running; restart the gateway to apply this",
        ));
    }
    let address = |l: &Loaded| l.config.admin.as_ref().map(|a| a.address);
    if address(current) != address(new) {
        errors.push(config::FieldError::new(
            "admin.address",
            "the admin listener cannot change while running; restart the gateway to apply this",
        ));
    }
    errors
}

/// Writes `path` so that readers see the old file or the new one, never a
/// mix: a temporary file beside it, flushed to disk, renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        // The file may hold secrets: keep the original's permissions.
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The kinds of named objects the admin API edits one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Route,
    Upstream,
    Consumer,
}

impl Kind {
    pub fn section(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Upstream => "upstreams",
            Kind::Consumer => "consumers",
        }
    }

    pub fn from_section(s: &str) -> Option<Kind> {
        match s {
            "routes" => Some(Kind::Route),
            "upstreams" => Some(Kind::Upstream),
            "consumers" => Some(Kind::Consumer),
            _ => None,
        }
    }
}

/// A key (plain) or a string value (quoted, so it stays a string).
fn scalar(value: &str, line: u32, plain: bool) -> Node {
    Node {
        line,
        kind: NodeKind::Scalar {
            value: value.to_string(),
            plain,
        },
    }
}

fn name_of(node: &Node) -> Option<&str> {
    match &node.get("name")?.kind {
        NodeKind::Scalar { value, .. } => Some(value),
        _ => None,
    }
}

/// The list of `kind` in `doc`, created when missing.
fn section_mut(doc: &mut Node, kind: Kind) -> Option<&mut Vec<Node>> {
    let NodeKind::Map(entries) = &mut doc.kind else {
        return None;
    };
    let key = kind.section();
    let pos = match entries
        .iter()
        .position(|(k, _)| matches!(&k.kind, NodeKind::Scalar { value, .. } if value == key))
    {
        Some(pos) => pos,
        None => {
            entries.push((
                scalar(key, 0, true),
                Node {
                    line: 0,
                    kind: NodeKind::Seq(Vec::new()),
                },
            ));
            entries.len() - 1
        }
    };
    let value = &mut entries[pos].1;
    if value.is_null() {
        value.kind = NodeKind::Seq(Vec::new());
    }
    match &mut value.kind {
        NodeKind::Seq(items) => Some(items),
        _ => None,
    }
}

/// The object of `kind` named `name` in `doc`.
pub fn find<'a>(doc: &'a Node, kind: Kind, name: &str) -> Option<&'a Node> {
    match &doc.get(kind.section())?.kind {
        NodeKind::Seq(items) => items.iter().find(|n| name_of(n) == Some(name)),
        _ => None,
    }
}

/// Puts `object` into `doc` as `name` (replacing one of that name, else
/// appended). Returns whether it was created; `Err` when the body is not
/// an object or names another object.
pub fn put(doc: &mut Node, kind: Kind, name: &str, mut object: Node) -> Result<bool, String> {
    let NodeKind::Map(entries) = &mut object.kind else {
        return Err(format!(
            "the body must be a {} object, found {}",
            kind_word(kind),
            object.describe()
        ));
    };
    match entries
        .iter()
        .find(|(k, _)| matches!(&k.kind, NodeKind::Scalar { value, .. } if value == "name"))
    {
        Some((_, v)) => match &v.kind {
            NodeKind::Scalar { value, .. } if value == name => {}
            _ => return Err(format!("`name` in the body must be `{name}`, as in the URL")),
        },
        None => entries.insert(
            0,
            (
                scalar("name", object.line, true),
                scalar(name, object.line, false),
            ),
        ),
    }
    let items =
        section_mut(doc, kind).ok_or_else(|| format!("`{}` in the config is not a list", kind.section()))?;
    match items.iter_mut().find(|n| name_of(n) == Some(name)) {
        Some(slot) => {
            *slot = object;
            Ok(false)
        }
        None => {
            items.push(object);
            Ok(true)
        }
    }
}

/// Removes `name` from `doc`; whether it was there.
pub fn remove(doc: &mut Node, kind: Kind, name: &str) -> bool {
    let Some(items) = section_mut(doc, kind) else {
        return false;
    };
    let before = items.len();
    items.retain(|n| name_of(n) != Some(name));
    items.len() != before
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Route => "route",
        Kind::Upstream => "upstream",
        Kind::Consumer => "consumer",
    }
}

/// The whole-document error for a body that failed before validation.
pub fn body_error(message: String) -> ConfigErrors {
    ConfigErrors {
        source: "request body".into(),
        errors: vec![ConfigError {
            line: None,
            path: String::new(),
            message,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the name of the thread that drops it.
    struct Probe(Arc<std::sync::Mutex<Option<String>>>);

    impl Drop for Probe {
        fn drop(&mut self) {
            let name = std::thread::current().name().map(str::to_string);
            *self.0.lock().unwrap() = Some(name.unwrap_or_default());
        }
    }

    #[test]
    fn a_retired_value_is_freed_by_the_reaper_once_its_last_holder_lets_go() {
        static REAPER: Reaper<Probe> = Reaper::new();
        let dropped_by = Arc::new(std::sync::Mutex::new(None));
        let old = Arc::new(Probe(dropped_by.clone()));
        // A request still running on the old value.
        let request = old.clone();
        REAPER.retire(old);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(*dropped_by.lock().unwrap(), None, "freed while still held");
        drop(request);
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while dropped_by.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "never freed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(dropped_by.lock().unwrap().as_deref(), Some("config-retire"));
    }
}
