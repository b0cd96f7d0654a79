//! The checks of an update order before anything is downloaded: pure, so that every
//! refusal is a unit test. Each refusal's text is what the coordinator shows.

use baton_proto::{AgentUpdate, MIN_PROTO_VERSION};

/// Why a node will not install a release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the release is built for {got}, this node runs {want}")]
    Target { got: String, want: String },
    #[error("the release version {0:?} is not a semantic version")]
    BadVersion(String),
    #[error("{to} is older than the running {from} and the rollout does not allow downgrades")]
    Downgrade { from: String, to: String },
    #[error("the release speaks protocol {got}; this agent needs {MIN_PROTO_VERSION} or newer")]
    OldProtocol { got: u16 },
    #[error(
        "no release public key is pinned on this node (enroll again, or set --release-public-key)"
    )]
    NoKey,
    #[error("not started by `baton-agent launch` (the unit of `baton-agent install`): nothing could roll an update back")]
    NoLauncher,
    #[error("not enough free disk in {dir}: {free} bytes free, {need} needed")]
    Disk { dir: String, free: u64, need: u64 },
    #[error("no coordinator API to download from (set --coordinator-api or --registry-mirror)")]
    NoSource,
    #[error("{0}")]
    Verify(String),
    #[error("{0}")]
    Failed(String),
}

/// What the node knows of itself when an order comes.
#[derive(Debug, Clone)]
pub struct Me<'a> {
    pub version: &'a str,
    pub target: &'a str,
    pub has_key: bool,
    pub launched: bool,
}

/// The order's checks that need no disk: target, version, protocol, key, launcher.
pub fn check_order(order: &AgentUpdate, me: &Me) -> Result<(), Refusal> {
    let r = &order.release;
    if r.target.as_str() != me.target {
        return Err(Refusal::Target {
            got: r.target.to_string(),
            want: me.target.to_owned(),
        });
    }
    let to = semver::Version::parse(r.version.as_str())
        .map_err(|_| Refusal::BadVersion(r.version.to_string()))?;
    // Our own version always parses (the workspace's); if a build set a bad one, no
    // downgrade check is possible and the order is taken as an upgrade.
    if let Ok(from) = semver::Version::parse(me.version) {
        if to < from && !order.allow_downgrade {
            return Err(Refusal::Downgrade {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
    }
    // A newer protocol is fine: a newer agent still speaks ours (it accepts and seals in
    // the versions its peers speak); an older one than MIN cannot talk to this coordinator.
    if r.protocol < MIN_PROTO_VERSION {
        return Err(Refusal::OldProtocol { got: r.protocol });
    }
    if !me.has_key {
        return Err(Refusal::NoKey);
    }
    if !me.launched {
        return Err(Refusal::NoLauncher);
    }
    Ok(())
}

/// Free space kept on top of the binary: the disk must not fill up because of an update.
pub const DISK_MARGIN: u64 = 64 << 20;

/// Whether `free` bytes can hold the rest of a `size`-byte download (`have` bytes are down).
pub fn check_disk(dir: &str, free: u64, size: u64, have: u64) -> Result<(), Refusal> {
    let need = size.saturating_sub(have) + DISK_MARGIN;
    if free < need {
        return Err(Refusal::Disk {
            dir: dir.to_owned(),
            free,
            need,
        });
    }
    Ok(())
}

/// Free bytes for unprivileged use on the filesystem holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::{BString, BVec, Release};

    fn order(version: &str, protocol: u16) -> AgentUpdate {
        AgentUpdate {
            rollout: BString::new("r1").unwrap(),
            release: Release {
                version: BString::new(version).unwrap(),
                target: BString::new("x86_64-unknown-linux-gnu").unwrap(),
                protocol,
                size: 10,
                sha256: [1; 32],
                signature: BVec::new(),
            },
            allow_downgrade: false,
            health_window_secs: 30,
            term: 0,
        }
    }

    fn me() -> Me<'static> {
        Me {
            version: "0.2.0",
            target: "x86_64-unknown-linux-gnu",
            has_key: true,
            launched: true,
        }
    }

    #[test]
    fn an_upgrade_for_this_target_with_a_key_under_the_launcher_passes() {
        assert_eq!(check_order(&order("0.2.1", 5), &me()), Ok(()));
        // A newer protocol is spoken down to ours by the new agent.
        assert_eq!(check_order(&order("0.3.0", 6), &me()), Ok(()));
        // Reinstalling the same version (a rebuilt binary) is no downgrade.
        assert_eq!(check_order(&order("0.2.0", 5), &me()), Ok(()));
    }

    #[test]
    fn each_refusal_says_why() {
        let mut o = order("0.2.1", 5);
        o.release.target = BString::new("aarch64-unknown-linux-musl").unwrap();
        assert_eq!(
            check_order(&o, &me()).unwrap_err().to_string(),
            "the release is built for aarch64-unknown-linux-musl, this node runs x86_64-unknown-linux-gnu"
        );
        assert_eq!(
            check_order(&order("banana", 5), &me()),
            Err(Refusal::BadVersion("banana".into()))
        );
        assert_eq!(
            check_order(&order("0.1.9", 5), &me())
                .unwrap_err()
                .to_string(),
            "0.1.9 is older than the running 0.2.0 and the rollout does not allow downgrades"
        );
        let mut down = order("0.1.9", 5);
        down.allow_downgrade = true;
        assert_eq!(check_order(&down, &me()), Ok(()));
        // Pre-releases sort below their release.
        assert!(matches!(
            check_order(&order("0.2.0-rc.1", 5), &me()),
            Err(Refusal::Downgrade { .. })
        ));
        assert_eq!(
            check_order(&order("0.2.1", 3), &me()),
            Err(Refusal::OldProtocol { got: 3 })
        );
        let keyless = Me {
            has_key: false,
            ..me()
        };
        assert_eq!(
            check_order(&order("0.2.1", 5), &keyless),
            Err(Refusal::NoKey)
        );
        let bare = Me {
            launched: false,
            ..me()
        };
        assert_eq!(
            check_order(&order("0.2.1", 5), &bare),
            Err(Refusal::NoLauncher)
        );
    }

    #[test]
    fn the_disk_must_hold_the_rest_of_the_download_and_a_margin() {
        let size = 20 << 20;
        assert!(check_disk("/d", size + DISK_MARGIN, size, 0).is_ok());
        assert_eq!(
            check_disk("/d", size + DISK_MARGIN - 1, size, 0),
            Err(Refusal::Disk {
                dir: "/d".into(),
                free: size + DISK_MARGIN - 1,
                need: size + DISK_MARGIN
            })
        );
        // A resumed download needs only the rest.
        assert!(check_disk("/d", DISK_MARGIN + 1, size, size - 1).is_ok());
    }
}
