//! Baton's agent library. `main.rs` only parses flags and calls [`node::run`].
//!
//! Module map: `node` owns all state and is driven by events; `reconcile` decides (pure);
//! `pod` executes decisions in workers; `runtime`, `image` and `network` are the effects
//! behind small interfaces; `bus` is the MQTT bridge; `state` persists desired state; `adopt` takes
//! over running containers after an agent restart.

pub mod adopt;
pub mod bus;
pub mod identity;
pub mod image;
pub mod mqtt_tls;
pub mod network;
pub mod node;
pub mod pod;
pub mod probe;
pub mod reconcile;
pub mod runtime;
pub mod secrets;
pub mod state;
pub mod volumes;

/// libcontainer clones its container processes straight off this multi-threaded process
/// (raw `clone3`: no `pthread_atfork` handlers run), and the child allocates. Under glibc's
/// malloc a child cloned while another thread held an arena lock waited on it forever (CI:
/// a pod stuck in `youki:[1:INTER]` on `main_arena`). mimalloc allocates from the cloning
/// thread's own heap and frees across threads with atomics, so the child has no lock to
/// inherit. It applies to every binary and test that links this library.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
