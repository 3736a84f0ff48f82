//! Reloads from outside the process: `SIGHUP`, and the config file
//! changing on disk.
//!
//! The watch is on the file's directory, not the file: editors and
//! Kubernetes ConfigMaps replace a file by renaming or swapping a symlink,
//! which a watch on the old inode would miss. Events are debounced (an
//! editor's save is several events) and the file is re-read; a reload
//! happens only when its text differs from the config in force, so our own
//! write-back of an admin change does not reload it again.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use super::{ApplyError, Control, Origin};

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads the config file on every `SIGHUP`.
pub fn spawn_sighup(control: Arc<Control>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change or the admin API");
                return;
            }
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config file");
                reload(&control, Origin::Signal).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = control;
}

/// Watches the config file and reloads it when it changes. The returned
/// watcher must be kept alive.
pub fn spawn_file_watch(control: Arc<Control>, path: &std::path::Path) -> Option<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP or the admin API");
            return None;
        }
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config directory; reload with SIGHUP or the admin API");
        return None;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            reload(&control, Origin::File).await;
        }
    });
    Some(watcher)
}

async fn reload(control: &Arc<Control>, origin: Origin) {
    match control
        .blocking(move |c, state| c.reload_file(state, origin))
        .await
    {
        // Applied and logged, or unchanged.
        Ok(_) => {}
        // Logged with every error by the control plane.
        Err(ApplyError::Invalid(_) | ApplyError::Persist(_)) => {}
    }
}
