// The target triple the agent was built for: an agent installs only a release built for
// its own target, and tells the coordinator which that is (a Hello label).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=BATON_AGENT_TARGET={target}");
    println!("cargo:rerun-if-env-changed=BATON_BUILD_VERSION");
}
