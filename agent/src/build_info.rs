//! What this build of the agent is: its version and target triple.

/// The agent's version: the crate's, unless the build set `BATON_BUILD_VERSION` (how the
/// update tests build a newer release of the same source, e.g. `0.2.1`).
pub const VERSION: &str = match option_env!("BATON_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The Rust target triple it was built for, e.g. `aarch64-unknown-linux-musl`.
pub const TARGET: &str = env!("BATON_AGENT_TARGET");

#[cfg(test)]
mod tests {
    #[test]
    fn version_and_target_are_set() {
        assert!(!super::VERSION.is_empty());
        assert!(super::TARGET.contains("-linux-"), "{}", super::TARGET);
    }
}
