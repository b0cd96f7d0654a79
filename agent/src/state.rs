//! The agent's persisted desired state: what it was last told to run.
//!
//! Written before acting on it, durably ([`crate::durable::write`]: temp file, fsync,
//! rename, fsync the directory), so that a power cut at any instant leaves either the old or
//! the new state on disk, never a torn one. After a reboot with no network the agent starts
//! from this file.

use std::fs;
use std::path::{Path, PathBuf};

use baton_proto::{BVec, DesiredState};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write desired state to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read desired state from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("desired state file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            path: data_dir.join("desired.bin"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last persisted desired state, or an empty generation-0 state if none exists.
    pub fn load(&self) -> Result<DesiredState, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DesiredState {
                    generation: 0,
                    pods: BVec::new(),
                    secrets: BVec::new(),
                    term: 0,
                    crons: Default::default(),
                })
            }
            Err(source) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        decode(&bytes).map_err(|reason| StateError::Corrupt {
            path: self.path.clone(),
            reason,
        })
    }

    /// Durably (see [`crate::durable`]): after a reboot with no network the agent runs
    /// what this file says, so a store that returned must survive a power cut.
    pub fn store(&self, state: &DesiredState) -> Result<(), StateError> {
        self.store_with(state, None)
    }

    /// [`StateFile::store`], spending `reserve` if the disk is full (see [`crate::reserve`]).
    pub fn store_with(
        &self,
        state: &DesiredState,
        reserve: Option<&crate::reserve::Reserve>,
    ) -> Result<(), StateError> {
        let bytes = encode(state);
        // Sealed secrets and pod specs: the owner's only (see `datadir`).
        let write = || crate::durable::write(&self.path, &bytes, crate::datadir::PRIVATE_FILE);
        match reserve {
            Some(r) => r.write(write),
            None => write(),
        }
        .map_err(|source| StateError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// What may run while `next` cannot be persisted: the pods of `current` that `next` still
/// has, at `current`'s generation. Stopping a pod frees what it holds and is safe to apply
/// unpersisted (an agent that restarts before `next` is on disk starts the stopped pods
/// again from the old file until the coordinator repeats `next`: docs/reliability.md,
/// "Full disk"); starting one is not, since after a reboot without the network the node
/// must run what its file says. Pure.
pub fn stops_only(current: &DesiredState, next: &DesiredState) -> DesiredState {
    let kept: std::collections::BTreeSet<&str> = next.pods.iter().map(|p| p.uid.as_str()).collect();
    let pods = current
        .pods
        .iter()
        .filter(|p| kept.contains(p.uid.as_str()))
        .cloned()
        .collect();
    DesiredState {
        generation: current.generation,
        // Never longer than `current`'s, so within its bound.
        pods: BVec::from_vec(pods).unwrap_or_default(),
        secrets: current.secrets.clone(),
        // What is on disk, with its term: a newer term is persisted with `next`.
        term: current.term,
        // Firing is starting: the CronJobs of the persisted state go on.
        crons: current.crons.clone(),
    }
}

// File format: magic, u32 LE length, postcard(DesiredState), u32 LE FNV-1a checksum.
// The checksum catches a file that a broken SD card or filesystem returns half-written.
// The magic names the protocol version whose shapes the body has (`baton_proto::wire`):
// "BTNS" is v4's, the file Baton 0.1 wrote, still read after an update from it.
const MAGIC_V4: &[u8; 4] = b"BTNS";
const MAGIC_V5: &[u8; 4] = b"BTN5";

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn encode(state: &DesiredState) -> Vec<u8> {
    encode_at(5, state)
}

fn encode_at(version: u16, state: &DesiredState) -> Vec<u8> {
    // postcard encoding of a DesiredState cannot fail: it only has sized, owned fields.
    let body = baton_proto::wire::at(version, || postcard::to_allocvec(state)).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(if version == 4 { MAGIC_V4 } else { MAGIC_V5 });
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&checksum(&body).to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<DesiredState, String> {
    if bytes.len() < 12 {
        return Err("bad header".into());
    }
    let version = match &bytes[..4] {
        m if m == MAGIC_V4 => 4,
        m if m == MAGIC_V5 => 5,
        _ => return Err("bad header".into()),
    };
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if bytes.len() != len + 12 {
        return Err(format!(
            "length {} does not match header {len}",
            bytes.len() - 12
        ));
    }
    let body = &bytes[8..8 + len];
    let sum = u32::from_le_bytes([
        bytes[8 + len],
        bytes[9 + len],
        bytes[10 + len],
        bytes[11 + len],
    ]);
    if checksum(body) != sum {
        return Err("checksum mismatch".into());
    }
    baton_proto::wire::at(version, || postcard::from_bytes(body)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, PodSpec, RestartPolicy};

    fn state(generation: u64, pods: usize) -> DesiredState {
        let pods = (0..pods)
            .map(|i| PodSpec {
                name: BString::new(format!("p{i}")).unwrap(),
                uid: BString::new(format!("u{i}")).unwrap(),
                host_network: false,
                restart_policy: RestartPolicy::Always,
                termination_grace_secs: 1,
                containers: BVec::new(),
                init_containers: BVec::new(),
                volumes: BVec::new(),
                image_pull_secrets: BVec::new(),
                priority: i as i32,
                dns: None,
            })
            .collect();
        DesiredState {
            generation,
            pods: BVec::from_vec(pods).unwrap(),
            secrets: BVec::new(),
            term: 40 + generation,
            crons: Default::default(),
        }
    }

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        let none = f.load().unwrap();
        assert_eq!((none.generation, none.term), (0, 0));
        f.store(&state(4, 3)).unwrap();
        assert_eq!(f.load().unwrap(), state(4, 3));
        f.store(&state(5, 1)).unwrap();
        assert_eq!(f.load().unwrap(), state(5, 1));
        // The leader's term is kept with the state: a new leader's is the state's news.
        let newer = DesiredState {
            term: 90,
            ..state(5, 1)
        };
        assert_ne!(newer, state(5, 1));
        f.store(&newer).unwrap();
        assert_eq!(f.load().unwrap().term, 90);
    }

    #[test]
    fn a_file_baton_0_1_wrote_loads_without_priorities_or_term() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        std::fs::write(f.path(), encode_at(4, &state(4, 3))).unwrap();
        let before = state(4, 3);
        let pods = before
            .pods
            .iter()
            .cloned()
            .map(|p| PodSpec { priority: 0, ..p });
        let old = DesiredState {
            pods: BVec::from_vec(pods.collect()).unwrap(),
            // Nor a leader's term.
            term: 0,
            ..state(4, 3)
        };
        assert_ne!(old, state(4, 3));
        assert_eq!(f.load().unwrap(), old);
        // What this build writes keeps the priorities.
        f.store(&state(4, 3)).unwrap();
        assert_eq!(&std::fs::read(f.path()).unwrap()[..4], MAGIC_V5);
        assert_eq!(f.load().unwrap(), state(4, 3));
    }

    #[test]
    fn unpersisted_states_only_stop_pods() {
        let current = state(4, 3); // p0 p1 p2
        let mut next = state(5, 4); // p0 p1 p2 p3
        next.pods = BVec::from_vec(
            next.pods
                .iter()
                .filter(|p| p.uid.as_str() != "u1")
                .cloned()
                .collect(),
        )
        .unwrap();
        let got = stops_only(&current, &next);
        assert_eq!(got.generation, 4, "not applied: the old generation stays");
        let uids: Vec<&str> = got.pods.iter().map(|p| p.uid.as_str()).collect();
        assert_eq!(uids, ["u0", "u2"], "u1 stopped, u3 not started");
        assert_eq!(stops_only(&current, &current), current);
        assert!(stops_only(&current, &state(6, 0)).pods.is_empty());
    }

    #[test]
    fn torn_or_flipped_files_are_reported_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(dir.path());
        f.store(&state(4, 3)).unwrap();
        let good = fs::read(f.path()).unwrap();
        for cut in [0, 3, 11, good.len() / 2, good.len() - 1] {
            fs::write(f.path(), &good[..cut]).unwrap();
            assert!(
                matches!(f.load(), Err(StateError::Corrupt { .. })),
                "cut at {cut}"
            );
        }
        let mut flipped = good.clone();
        flipped[14] ^= 0x40;
        fs::write(f.path(), &flipped).unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
    }
}
