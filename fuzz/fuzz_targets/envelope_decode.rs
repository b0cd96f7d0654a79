//! Arbitrary bytes into the envelope decoder (every message body, every bound). A decode
//! must never panic, and whatever decodes must re-encode to a message that decodes to the
//! same value: nothing accepted is half-understood.
#![no_main]

use baton_proto::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let bytes = env.encode().expect("a decoded envelope re-encodes");
        assert_eq!(Envelope::decode(&bytes).expect("re-decodes"), env);
        // What is signed must be computable for anything accepted.
        let _ = env.signing_bytes("baton/v1/nodes/n/up/status");
    }
});
