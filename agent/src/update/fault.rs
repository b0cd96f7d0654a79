//! TEST ONLY: faults a test release carries, so the update e2e tests can make a new agent
//! fail in the ways a real bad release would, from the same source.
//!
//! `BATON_TEST_UPDATE_FAULT=<version>:crash` makes an agent of exactly that version exit
//! with status 101 right at start; `<version>:no-connect` makes it dial a port where no
//! broker listens, so it never connects nor gets its desired state. An agent of any other
//! version ignores the variable, so the version rolled back to runs normally. Nothing
//! else reads it; it has no flag on purpose.

/// The variable's name.
pub const FAULT_ENV: &str = "BATON_TEST_UPDATE_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Crash,
    NoConnect,
}

/// The fault `value` asks of an agent of version `version`, if any.
pub fn parse(value: &str, version: &str) -> Option<Fault> {
    let (v, what) = value.trim().rsplit_once(':')?;
    if v != version {
        return None;
    }
    match what {
        "crash" => Some(Fault::Crash),
        "no-connect" => Some(Fault::NoConnect),
        _ => None,
    }
}

/// The fault asked of this build, from the environment.
pub fn from_env() -> Option<Fault> {
    let value = std::env::var(FAULT_ENV).ok()?;
    let f = parse(&value, crate::build_info::VERSION);
    if let Some(f) = f {
        tracing::warn!(fault = ?f, "{FAULT_ENV}: TEST ONLY fault of this version");
    }
    f
}

/// A broker URL where nobody listens, of the same scheme as `url` (so the TLS settings
/// still match it): port 9 of the loopback.
pub fn unreachable_broker(url: &str) -> String {
    let scheme = url.split_once("://").map_or("mqtt", |(s, _)| s);
    format!("{scheme}://127.0.0.1:9")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_applies_only_to_its_version() {
        assert_eq!(parse("0.2.1:crash", "0.2.1"), Some(Fault::Crash));
        assert_eq!(parse("0.2.1:no-connect", "0.2.1"), Some(Fault::NoConnect));
        assert_eq!(parse("0.2.1:crash", "0.2.0"), None);
        assert_eq!(parse("0.2.1:explode", "0.2.1"), None);
        assert_eq!(parse("crash", "0.2.1"), None);
        assert_eq!(
            unreachable_broker("mqtts://10.0.0.1:8883"),
            "mqtts://127.0.0.1:9"
        );
    }
}
