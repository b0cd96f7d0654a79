//! The protocol version an encoding is for, while one envelope (or one file written as a
//! version has it) is encoded or decoded.
//!
//! postcard does not describe itself, so a message whose shape changed between versions
//! (v5 added [`crate::PodSpec::priority`], [`crate::Hello::taints`] and
//! [`crate::DesiredState::term`]) must be written in the shape its reader knows and
//! read in the shape its writer used. Threading a version through every nested `Serialize`
//! would mean hand-written impls for every type that contains a `PodSpec`; instead the few
//! types that changed read the version from here. Encoding and decoding are synchronous and
//! never yield, so a thread-local is exact: [`at`] sets it for one call and restores it,
//! also on panic.

use std::cell::Cell;

thread_local! {
    static VERSION: Cell<u16> = const { Cell::new(crate::PROTO_VERSION) };
}

/// The version being encoded or decoded on this thread ([`crate::PROTO_VERSION`] outside
/// [`at`]).
pub fn version() -> u16 {
    VERSION.with(Cell::get)
}

/// Runs `f` (an encode or a decode) in the shapes of protocol `version`.
pub fn at<R>(version: u16, f: impl FnOnce() -> R) -> R {
    struct Restore(u16);
    impl Drop for Restore {
        fn drop(&mut self) {
            VERSION.with(|v| v.set(self.0));
        }
    }
    let _restore = Restore(VERSION.with(|v| v.replace(version)));
    f()
}
