//! Arbitrary text into `baton apply`'s manifest parser: never a panic, only objects or a
//! clear error. Invalid UTF-8 is not interesting here (the CLI refuses it before parsing).
#![no_main]

use baton_coordinator::model::manifest::parse_manifests;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = parse_manifests(text) {
            // Errors are rendered for the user: rendering must not panic either.
            let _ = e.to_string();
        }
    }
});
