//! Arbitrary tar entries into the agent's layer unpacker (issue 9.1): names, hard and
//! symbolic links, whiteouts, modes, devices, xattrs and sizes, plain or gzipped, with or
//! without a byte limit. Layers come from any registry a pod names, so this is the agent's
//! most exposed parser.
//!
//! Never a panic; nothing outside the layer's own directory is created, changed or removed;
//! a failed unpack leaves nothing; the meter charges at least what the layer takes on disk.
//! All of it is `baton_agent::image::hostile::check` (shared with the property test), which
//! works in a sandbox under the temp dir. Run as root (device nodes, chown).
#![no_main]

use baton_agent::image::hostile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (entries, limit, gzip) = hostile::decode(data);
    if let Err(problem) = hostile::check(&entries, limit, gzip) {
        panic!("{problem}");
    }
});
