//! Which node conditions are under pressure: measured signals against thresholds, as
//! kubelet's eviction manager maps them (`nodefs.*` and `imagefs.*` to DiskPressure,
//! `memory.available` to MemoryPressure, `pid.available` to PIDPressure). Pure.

use baton_proto::PressureKind;

use super::thresholds::{human_bytes, Signal, Thresholds};

/// A filesystem's free and total space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fs {
    pub avail_bytes: u64,
    pub total_bytes: u64,
    pub avail_inodes: u64,
    pub total_inodes: u64,
}

/// One measurement of the node; `None` where a signal could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// The data disk.
    pub nodefs: Option<Fs>,
    /// The image store's disk, only when it is another filesystem than the data disk.
    pub imagefs: Option<Fs>,
    /// Available and total memory, in bytes.
    pub memory: Option<(u64, u64)>,
    /// Process ids left and `pid_max`.
    pub pids: Option<(u64, u64)>,
}

/// A condition under pressure, and what was measured against which threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pressure {
    pub kind: PressureKind,
    pub signal: Signal,
    pub message: String,
}

/// The conditions under pressure in `o`, one per kind (the first signal found for it), in
/// [`PressureKind`] order.
pub fn pressures(t: &Thresholds, o: &Observed) -> Vec<Pressure> {
    let fs = |f: Option<Fs>| {
        (
            f.map(|f| (f.avail_bytes, f.total_bytes)),
            f.map(|f| (f.avail_inodes, f.total_inodes)),
        )
    };
    let (node_bytes, node_inodes) = fs(o.nodefs);
    let (image_bytes, image_inodes) = fs(o.imagefs);
    let checks = [
        (PressureKind::Disk, Signal::NodefsAvailable, node_bytes),
        (PressureKind::Disk, Signal::NodefsInodesFree, node_inodes),
        (
            PressureKind::ImageDisk,
            Signal::ImagefsAvailable,
            image_bytes,
        ),
        (
            PressureKind::ImageDisk,
            Signal::ImagefsInodesFree,
            image_inodes,
        ),
        (PressureKind::Memory, Signal::MemoryAvailable, o.memory),
        (PressureKind::Pid, Signal::PidAvailable, o.pids),
    ];
    let mut out: Vec<Pressure> = Vec::new();
    for (kind, signal, value) in checks {
        let (Some(level), Some((avail, total))) = (t.get(signal), value) else {
            continue;
        };
        if out.iter().any(|p| p.kind == kind) {
            continue;
        }
        let under = level.of(total);
        if avail < under {
            let show = |v: u64| {
                if signal.is_bytes() {
                    human_bytes(v)
                } else {
                    v.to_string()
                }
            };
            out.push(Pressure {
                kind,
                signal,
                message: format!(
                    "{} {} < {} ({level})",
                    signal.name(),
                    show(avail),
                    show(under)
                ),
            });
        }
    }
    out
}

/// `memory.available` as kubelet sees it against the node's allocatable memory: the host's
/// `MemAvailable`, or what the pods' working set leaves of `allocatable` if that is less,
/// with the capacity percentages are taken of (the allocatable then).
pub fn memory_available(
    host: Option<(u64, u64)>,
    allocatable: u64,
    pods_working_set: Option<u64>,
) -> Option<(u64, u64)> {
    let pods = pods_working_set.map(|ws| (allocatable.saturating_sub(ws), allocatable));
    match (host, pods) {
        (Some(h), Some(p)) if p.0 < h.0 => Some(p),
        (Some(h), _) => Some(h),
        (None, p) => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pressure::thresholds::DEFAULT_EVICTION_HARD;

    fn fs(avail_mib: u64, total_mib: u64) -> Option<Fs> {
        Some(Fs {
            avail_bytes: avail_mib << 20,
            total_bytes: total_mib << 20,
            avail_inodes: 1000,
            total_inodes: 1000,
        })
    }

    fn kinds(p: &[Pressure]) -> Vec<PressureKind> {
        p.iter().map(|p| p.kind).collect()
    }

    #[test]
    fn each_signal_maps_to_its_condition() {
        let t = Thresholds::parse(DEFAULT_EVICTION_HARD).unwrap();
        let healthy = Observed {
            nodefs: fs(20, 24),
            imagefs: None,
            memory: Some((500 << 20, 1 << 30)),
            pids: Some((30_000, 32_768)),
        };
        assert!(pressures(&t, &healthy).is_empty());

        let full = Observed {
            nodefs: fs(1, 24),
            ..healthy
        };
        let p = pressures(&t, &full);
        assert_eq!(kinds(&p), [PressureKind::Disk]);
        assert_eq!(p[0].message, "nodefs.available 1.0Mi < 2.4Mi (10%)");

        let everything = Observed {
            nodefs: Some(Fs {
                avail_inodes: 10,
                ..fs(20, 24).unwrap()
            }),
            imagefs: fs(1, 100),
            memory: Some((10 << 20, 1 << 30)),
            pids: Some((100, 32_768)),
        };
        let p = pressures(&t, &everything);
        assert_eq!(
            kinds(&p),
            [
                PressureKind::Disk,
                PressureKind::ImageDisk,
                PressureKind::Memory,
                PressureKind::Pid
            ]
        );
        assert_eq!(p[0].signal, Signal::NodefsInodesFree);
        assert_eq!(p[0].message, "nodefs.inodesFree 10 < 50 (5%)");
        assert_eq!(p[3].message, "pid.available 100 < 1638 (5%)");
    }

    #[test]
    fn memory_is_short_against_the_host_or_the_allocatable_whichever_is_less() {
        let host = Some((8 << 30, 16 << 30));
        assert_eq!(
            memory_available(host, 300 << 20, Some(250 << 20)),
            Some((50 << 20, 300 << 20))
        );
        assert_eq!(
            memory_available(host, 300 << 20, Some(0)),
            Some((300 << 20, 300 << 20))
        );
        assert_eq!(
            memory_available(host, 32 << 30, Some(0)),
            host,
            "the host is shorter"
        );
        assert_eq!(memory_available(host, 300 << 20, None), host);
        assert_eq!(
            memory_available(None, 300 << 20, Some(400 << 20)),
            Some((0, 300 << 20))
        );
    }

    #[test]
    fn no_threshold_or_no_measurement_is_no_pressure() {
        let o = Observed {
            nodefs: fs(0, 24),
            memory: None,
            ..Default::default()
        };
        assert!(pressures(&Thresholds::default(), &o).is_empty());
        let t = Thresholds::parse("memory.available<1Gi").unwrap();
        assert!(pressures(&t, &o).is_empty());
        // At the threshold exactly is not under it.
        let t = Thresholds::parse("nodefs.available<1Mi").unwrap();
        assert!(pressures(
            &t,
            &Observed {
                nodefs: fs(1, 24),
                ..o
            }
        )
        .is_empty());
    }
}
