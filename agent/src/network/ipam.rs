//! Pod addresses (IPAM): one file per address under `ipam-<bridge>/` in the state dir,
//! named by the address and holding the owner's pod uid, like CNI's host-local plugin.

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{io_err, short_hash, NetError, Network};

impl Network {
    pub(super) fn ipam_dir(&self) -> PathBuf {
        self.cfg.state_dir.join(format!("ipam-{}", self.cfg.bridge))
    }

    /// The address of every pod that has one, from the address files.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, NetError> {
        let dir = self.ipam_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue; // a temp file of an allocation in progress
            };
            let path = entry.path();
            let owner = fs::read_to_string(&path).map_err(io_err(&path))?;
            out.push((ip, owner));
        }
        out.sort();
        Ok(out)
    }

    /// Returns the pod's address, allocating a free one if it has none.
    ///
    /// One file per address, named by the address and holding the pod uid. A new file is
    /// written under a temporary name and hard-linked into place: `link` fails if the name
    /// exists, so two allocators (even in two processes) can never both get an address, and a
    /// crash never leaves a claimed address without its owner.
    pub(super) fn allocate(&self, pod_uid: &str) -> Result<Ipv4Addr, NetError> {
        if let Some((ip, _)) = self.allocations()?.into_iter().find(|(_, o)| o == pod_uid) {
            return Ok(ip);
        }
        let dir = self.ipam_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            short_hash(&[pod_uid], 12)
        ));
        // Durably, and the link below synced too: after a power cut an address is claimed
        // by its pod or not at all, never by an empty file that nobody would ever free.
        crate::durable::write(&tmp, pod_uid.as_bytes(), 0o644).map_err(io_err(&tmp))?;
        // Round robin from the last address handed out, like CNI's host-local IPAM: an
        // address just freed is reused last, so clients that still hold the old pod's MAC
        // for it in their neighbour cache are not sent to a dead port.
        let addrs: Vec<Ipv4Addr> = self.cfg.pod_cidr.pod_addrs().collect();
        let last_file = self
            .cfg
            .state_dir
            .join(format!("ipam-{}.last", self.cfg.bridge));
        let start = fs::read_to_string(&last_file)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok())
            .and_then(|last| addrs.iter().position(|a| *a == last))
            .map_or(0, |i| i + 1);
        let result = (|| {
            for ip in addrs[start..].iter().chain(&addrs[..start]).copied() {
                let path = dir.join(ip.to_string());
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => {
                        crate::durable::sync_parent(&path).map_err(io_err(&path))?;
                        // Best effort and unsynced on purpose: losing it only makes reuse
                        // come sooner. Atomic all the same, so a reader never sees half.
                        let _ = crate::durable::write_unsynced(
                            &last_file,
                            ip.to_string().as_bytes(),
                            0o644,
                        );
                        return Ok(ip);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            Err(NetError::Exhausted(self.cfg.pod_cidr))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// The node's IPAM files once every pod's address is freed: the round-robin cursor and
    /// the (then empty) address directory. A directory still holding an address is kept.
    pub(super) fn remove_state(&self) -> Result<(), NetError> {
        let last = self
            .cfg
            .state_dir
            .join(format!("ipam-{}.last", self.cfg.bridge));
        for (path, r) in [
            (last.clone(), fs::remove_file(&last)),
            (self.ipam_dir(), fs::remove_dir(self.ipam_dir())),
        ] {
            match r {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn free(&self, pod_uid: &str) -> Result<(), NetError> {
        let dir = self.ipam_dir();
        for (ip, owner) in self.allocations()? {
            if owner == pod_uid {
                let path = dir.join(ip.to_string());
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
