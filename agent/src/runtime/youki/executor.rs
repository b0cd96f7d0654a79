//! How a container's process is exec'd: libcontainer's executor without the process
//! environment (see the module docs of [`super`]), and the SIGPIPE disposition it inherits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{
    Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError,
};

/// libcontainer's default executor, minus its use of the process environment: `setup_envs` keeps
/// the container's environment aside and `exec` passes it to `execve` explicitly. See the module
/// docs for why (`std::env::set_var` in a forked child can deadlock).
#[derive(Clone, Default)]
pub(super) struct ExplicitEnvExecutor {
    /// Filled by `setup_envs` in the container's init, read by `exec` in the same process. `Rc`
    /// because executors are cloned into the child, which is single-threaded.
    envs: Rc<RefCell<Vec<CString>>>,
    /// For a process exec'd into a running container: the container's seccomp filter, which
    /// libcontainer's tenant builder leaves out of the spec. `None` for inits, whose filter
    /// libcontainer loads itself. Loading needs `no_new_privs`, which the tenant has by then.
    seccomp: Option<Rc<LinuxSeccomp>>,
    /// For a tenant with a terminal (`baton exec -t`): its window size (rows, cols), set on
    /// the terminal right before `execve`, so the command's first look at it is right.
    winsize: Option<(u16, u16)>,
}

impl ExplicitEnvExecutor {
    pub(super) fn for_tenant(seccomp: Option<LinuxSeccomp>) -> Self {
        Self {
            envs: Rc::default(),
            seccomp: seccomp.map(Rc::new),
            winsize: None,
        }
    }

    pub(super) fn with_winsize(self, winsize: Option<(u16, u16)>) -> Self {
        Self { winsize, ..self }
    }

    /// Loads the tenant's filter; without seccomp support there is never one to load (the
    /// spec of a container gets none, see `seccomp_filter` in [`super::spec`]), so a filter
    /// here is an error.
    fn load_seccomp(&self) -> Result<(), ExecutorError> {
        let Some(filter) = &self.seccomp else {
            return Ok(());
        };
        #[cfg(feature = "seccomp")]
        return libcontainer::seccomp::initialize_seccomp(filter)
            .map(drop)
            .map_err(|e| ExecutorError::Other(format!("cannot load the seccomp filter: {e}")));
        #[cfg(not(feature = "seccomp"))]
        {
            let _ = filter;
            Err(ExecutorError::Other(
                "the container has a seccomp filter, but this agent has no seccomp support".into(),
            ))
        }
    }

    fn path_var(&self) -> String {
        self.envs
            .borrow()
            .iter()
            .find_map(|e| e.to_str().ok()?.strip_prefix("PATH=").map(str::to_owned))
            .unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            })
    }
}

/// `execvp`'s lookup, over the container's PATH (we are already inside the rootfs).
fn find_executable(name: &str, path_var: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

impl Executor for ExplicitEnvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        let path = find_executable(&args[0], &self.path_var()).ok_or_else(|| {
            ExecutorError::Other(format!("executable {:?} not found in PATH", args[0]))
        })?;
        let path = CString::new(path.into_os_string().into_encoded_bytes())
            .map_err(|_| ExecutorError::InvalidArg)?;
        let argv = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let envs = self.envs.borrow();
        if let Some((rows, cols)) = self.winsize {
            // The terminal is our stdin by now (libcontainer connected it).
            let size = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let _ = rustix::termios::tcsetwinsize(std::io::stdin(), size);
        }
        // Last, so the child makes as few syscalls as possible under the filter.
        self.load_seccomp()?;
        let err = match nix::unistd::execve(&path, &argv, &envs) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        Err(ExecutorError::Execution(
            format!("cannot execute {path:?}: {err}").into(),
        ))
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        let mut list = envs
            .into_iter()
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ExecutorSetEnvsError::SetEnvs(Box::new(e)))?;
        list.sort();
        *self.envs.borrow_mut() = list;
        Ok(())
    }
}

/// Makes SIGPIPE *handled* instead of ignored in this process, once.
///
/// Rust programs (and the test harness) start with SIGPIPE ignored, and an ignored signal stays
/// ignored across exec, so every container would inherit it: `yes | head` would then never end,
/// because `yes` gets EPIPE instead of dying. A handled signal is reset to the default by exec.
/// Registering a tokio listener installs such a handler (it only wakes tokio's signal driver),
/// without unsafe code; the handler outlives the small runtime used to install it, and writes to
/// closed sockets in the agent still just return EPIPE.
pub(super) fn handle_sigpipe() -> io::Result<()> {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    // Inside a runtime (the agent) use it: creating and dropping a second runtime from
    // async context panics. Outside one (tests, benches) a throwaway runtime will do;
    // tokio keeps the handler installed after both are gone.
    if tokio::runtime::Handle::try_current().is_ok() {
        let _listener = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())?;
    } else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let _enter = rt.enter();
        let _listener = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())?;
    }
    let _ = DONE.set(());
    Ok(())
}
