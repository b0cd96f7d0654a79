//! Arbitrary request bodies into the enrollment handler's core (`POST /api/v1/enroll`
//! takes them unauthenticated, so this is the coordinator's most exposed parser). The
//! literal `TOKEN` in an input is replaced by a real, many-use join token so the fuzzer
//! also gets past the token check into names, keys and labels.
//!
//! Never a panic; and an error must map to a 4xx (the client's fault), never a 5xx.
#![no_main]

use std::sync::{Arc, OnceLock};

use baton_coordinator::contract::tokens::JoinTokenRequest;
use baton_coordinator::security::enroll::Enroller;
use baton_coordinator::security::pki::Pki;
use baton_coordinator::security::gate::{Security, SecurityConfig};
use baton_coordinator::store::{MemStore, Store};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000;

struct Rig {
    enroller: Enroller,
    token: String,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("baton-fuzz-enroll-{}", std::process::id()));
        let pki = Arc::new(Pki::load_or_create(&dir).expect("pki"));
        let store: Arc<dyn Store> = Arc::new(MemStore::default());
        let sec = Arc::new(Security::load(store.clone(), pki, SecurityConfig::default()).expect("security"));
        let enroller = Enroller::load(store, sec).expect("enroller");
        let (token, _) = enroller
            .create_token(
                &JoinTokenRequest {
                    ttl_seconds: 3600,
                    uses: u32::MAX,
                    labels: Default::default(),
                    node_name: None,
                },
                NOW,
            )
            .expect("token");
        Rig { enroller, token }
    })
}

fuzz_target!(|data: &[u8]| {
    let rig = rig();
    let body: Vec<u8> = match std::str::from_utf8(data) {
        Ok(s) if s.contains("TOKEN") => s.replace("TOKEN", &rig.token).into_bytes(),
        _ => data.to_vec(),
    };
    if let Err(e) = rig.enroller.enroll(&body, NOW + 1) {
        let status = e.status();
        assert!((400..500).contains(&status), "{e} answered {status}");
    }
});
