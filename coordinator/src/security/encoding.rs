//! Small helpers the security room shares: base64 (keys and signatures travel as text in
//! JSON and in the store) and the wall clock in milliseconds (the unit of `sent_at_ms`).
//!
//! A leaf: it imports nothing of the crate, so the gate, the PKI, enrollment and the HTTP
//! edge can all use it without importing each other.

use base64::Engine as _;

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
