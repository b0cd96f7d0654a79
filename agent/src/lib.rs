//! Baton's agent library. `main.rs` only parses flags, starts the bus and runs a
//! [`node::Node`] over it.
//!
//! Module map: `node` owns all state and is driven by events; `reconcile` decides (pure);
//! `pod` executes decisions in workers; `runtime`, `image` and `network` are the effects
//! behind small interfaces; `bus` is the MQTT bridge (`link_profile` sets how much it says); `state` persists desired state (`reserve`
//! keeps room for it on a full disk); `adopt` takes
//! over running containers after an agent restart.

pub mod adopt;
pub mod build_info;
pub mod bus;
pub mod datadir;
pub mod durable;
pub mod identity;
pub mod image;
pub mod install;
pub mod link_profile;
pub mod logs;
pub mod mqtt_tls;
pub mod network;
pub mod node;
pub mod pod;
pub mod pressure;
pub mod probe;
pub mod reconcile;
pub mod reserve;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod update;
pub mod usage;
pub mod volumes;

/// libcontainer clones its container processes straight off this multi-threaded process
/// (raw `clone3`: no `pthread_atfork` handlers run), and the child allocates. Under glibc's
/// malloc a child cloned while another thread held an arena lock waited on it forever (CI:
/// a pod stuck in `youki:[1:INTER]` on `main_arena`). mimalloc allocates from the cloning
/// thread's own heap and frees across threads with atomics, so the child has no lock to
/// inherit. It applies to every binary and test that links this library. Built without its
/// transparent-huge-page advice (`no_thp`), which tripled the agent's RSS on hosts with THP.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Makes mimalloc return freed pages to the OS at once instead of after 10 ms. The agent's
/// many short-lived worker threads otherwise each kept pages of their own: with 10 pods the
/// agent used 46 MB instead of 29 MB (`tests/bench/probes.sh`). `baton-agent` calls this
/// first thing.
pub fn tune_allocator() {
    // SAFETY: `mi_option_set` only stores a value in mimalloc's option table; it takes no
    // pointers and is safe to call from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// `mi_option_purge_delay` in mimalloc v2's `mimalloc.h` (libmimalloc-sys exports no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[cfg(test)]
mod tests {
    /// The option index is copied from mimalloc's header: if an upgrade moved it, this reads
    /// another option. Tests never call `tune_allocator`, so the default (10 ms) shows.
    #[test]
    fn the_purge_delay_option_index_is_mimallocs() {
        #[allow(unsafe_code)]
        // SAFETY: reads an integer from mimalloc's option table.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 10);
    }
}
