//! What a panic leaves behind, so that one bad input cannot crash-loop the agent.
//!
//! The device build aborts on panic (`cross/build.sh`: no unwinding code or tables, about a
//! seventh of the binary). A panic then ends the agent; systemd starts it again
//! (`Restart=always`) and it re-adopts its running containers, so a bug costs a restart, not
//! the workloads. But a panic caused by an input that is still there after the restart, a
//! hostile layer from a registry say, would crash the agent again at every start.
//!
//! So work on such input runs under a [`Guard`] naming a marker file. If it panics, the
//! panic hook ([`install_hook`]) writes the marker (what was being done and the panic's
//! message) before the process ends, and the next attempt finds it ([`marker`]) and refuses
//! that input with a clear error. The marker is written whatever the panic strategy, so test
//! and debug builds, which unwind and survive, quarantine the same input the same way.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Once;

use crate::durable;

/// What the current thread is doing on hostile input, if anything.
struct Marker {
    path: PathBuf,
    what: String,
}

thread_local! {
    static CURRENT: RefCell<Option<Marker>> = const { RefCell::new(None) };
}

/// While alive, a panic on this thread writes its marker file. Not `Send`: the marker
/// belongs to the thread that does the work (blocking code, not an async task).
pub struct Guard {
    previous: Option<Marker>,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Runs the rest of the caller's scope under a marker at `path` describing it as `what`
/// ("unpacking layer sha256:…").
pub fn guard(path: PathBuf, what: String) -> Guard {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(Marker { path, what }));
    Guard {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Installs the hook that writes the current thread's marker on a panic, then hands the
/// panic to the hook that was there (which prints it). Once per process; later calls do
/// nothing.
pub fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            record(info);
            previous(info);
        }));
    });
}

fn record(info: &std::panic::PanicHookInfo<'_>) {
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    let location = info
        .location()
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    // try_borrow: a panic while the guard itself is being changed has no marker to write.
    CURRENT.with(|c| {
        if let Ok(current) = c.try_borrow() {
            if let Some(m) = current.as_ref() {
                let text = format!("{} panicked: {message}{location}\n", m.what);
                if let Some(dir) = m.path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                // Synced: the process is about to end, and the marker must outlive it.
                let _ = durable::write(&m.path, text.as_bytes(), 0o600);
            }
        }
    });
}

/// The marker a panic left at `path`: what was being done and how it panicked.
pub fn marker(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_a_guard_leaves_its_marker_and_one_outside_none() {
        install_hook();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q").join("layer");
        let outside = std::thread::spawn(|| panic!("not guarded")).join();
        assert!(outside.is_err());
        assert_eq!(marker(&path), None);

        let p = path.clone();
        let guarded = std::thread::spawn(move || {
            let _g = guard(p, "unpacking layer sha256:ab".into());
            panic!("index out of bounds: the len is 3 but the index is 7");
        })
        .join();
        assert!(guarded.is_err());
        let m = marker(&path).expect("the marker");
        assert!(
            m.starts_with("unpacking layer sha256:ab panicked: index out of bounds")
                && m.contains("crash.rs:"),
            "{m}"
        );
    }

    #[test]
    fn a_guard_ends_with_its_scope_and_restores_the_outer_one() {
        install_hook();
        let dir = tempfile::tempdir().unwrap();
        let (outer, inner) = (dir.path().join("outer"), dir.path().join("inner"));
        let (o, i) = (outer.clone(), inner.clone());
        let r = std::thread::spawn(move || {
            let _outer = guard(o, "outer work".into());
            {
                let _inner = guard(i, "inner work".into());
            }
            panic!("after the inner guard");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(marker(&inner), None);
        assert!(marker(&outer).unwrap().starts_with("outer work panicked"));
    }
}
