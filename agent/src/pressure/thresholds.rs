//! Eviction thresholds in kubelet's flag shape: `memory.available<50Mi,nodefs.available<10%`.
//! Pure: text in, [`Thresholds`] out.

use std::fmt;

use super::PressureError;

/// kubelet's eviction signals that Baton measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signal {
    /// Free memory (`MemAvailable`) of the node.
    MemoryAvailable,
    /// Free bytes on the data disk.
    NodefsAvailable,
    /// Free inodes on the data disk.
    NodefsInodesFree,
    /// Free bytes on the image store's disk, when it is not the data disk.
    ImagefsAvailable,
    ImagefsInodesFree,
    /// Process ids left before `pid_max`.
    PidAvailable,
}

impl Signal {
    const ALL: [(Signal, &'static str); 6] = [
        (Signal::MemoryAvailable, "memory.available"),
        (Signal::NodefsAvailable, "nodefs.available"),
        (Signal::NodefsInodesFree, "nodefs.inodesFree"),
        (Signal::ImagefsAvailable, "imagefs.available"),
        (Signal::ImagefsInodesFree, "imagefs.inodesFree"),
        (Signal::PidAvailable, "pid.available"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(s, _)| *s)
    }

    /// Whether the signal counts bytes (shown as a quantity) rather than inodes or pids.
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Signal::MemoryAvailable | Signal::NodefsAvailable | Signal::ImagefsAvailable
        )
    }
}

/// The level under which a signal is under pressure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// An absolute amount (bytes for `*.available`, a count for inodes and pids).
    Amount(u64),
    /// A share of the capacity, 0-100.
    Percent(f64),
}

impl Level {
    /// The amount under which `capacity` is under pressure.
    pub fn of(self, capacity: u64) -> u64 {
        match self {
            Level::Amount(a) => a,
            Level::Percent(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Amount(a) => write!(f, "{a}"),
            Level::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub level: Level,
}

/// One threshold a signal at most (a later one for the same signal replaces it, as kubelet's
/// map does).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Thresholds(pub Vec<Threshold>);

/// kubelet's defaults for Linux, with memory sized for a Pi (kubelet's 100Mi is a tenth of a
/// Pi 3's memory) and a pid threshold kubelet leaves unset: a fork bomb must not take the
/// agent's own forks.
pub const DEFAULT_EVICTION_HARD: &str = "memory.available<50Mi,nodefs.available<10%,\
nodefs.inodesFree<5%,imagefs.available<15%,imagefs.inodesFree<5%,pid.available<5%";

impl Thresholds {
    /// Parses `signal<quantity` items separated by commas; `""` is no threshold at all.
    pub fn parse(text: &str) -> Result<Self, PressureError> {
        let mut out: Vec<Threshold> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = |why: &str| PressureError::Threshold {
                item: item.to_owned(),
                why: why.to_owned(),
            };
            let (name, value) = item
                .split_once('<')
                .ok_or_else(|| bad("expected signal<quantity"))?;
            let signal = Signal::parse(name.trim()).ok_or_else(|| {
                bad("unknown signal (memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available)")
            })?;
            let value = value.trim();
            let level = if let Some(p) = value.strip_suffix('%') {
                let p: f64 = p.parse().map_err(|_| bad("bad percentage"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad("percentage out of 0-100"));
                }
                Level::Percent(p)
            } else if signal.is_bytes() {
                Level::Amount(parse_bytes(value).ok_or_else(|| bad("bad quantity"))?)
            } else {
                Level::Amount(value.parse().map_err(|_| bad("bad count"))?)
            };
            out.retain(|t| t.signal != signal);
            out.push(Threshold { signal, level });
        }
        out.sort_by_key(|t| t.signal);
        Ok(Thresholds(out))
    }

    pub fn get(&self, signal: Signal) -> Option<Level> {
        self.0.iter().find(|t| t.signal == signal).map(|t| t.level)
    }
}

/// A Kubernetes byte quantity: plain, or with a binary (`Ki`..`Ti`) or decimal (`k`..`T`)
/// suffix.
fn parse_bytes(s: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, unit) in SUFFIXES {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().ok()?.checked_mul(unit);
        }
    }
    s.parse().ok()
}

/// Bytes the way `kubectl` shows quantities: `1.5Mi`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (u, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if v >= 100.0 {
                format!("{v:.0}{u}")
            } else {
                format!("{v:.1}{u}")
            };
        }
    }
    format!("{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_shaped_thresholds_parse() {
        let t = Thresholds::parse("nodefs.available<10%, memory.available<50Mi,pid.available<1000")
            .unwrap();
        assert_eq!(
            t.get(Signal::MemoryAvailable),
            Some(Level::Amount(50 << 20))
        );
        assert_eq!(t.get(Signal::NodefsAvailable), Some(Level::Percent(10.0)));
        assert_eq!(t.get(Signal::PidAvailable), Some(Level::Amount(1000)));
        assert_eq!(t.get(Signal::ImagefsAvailable), None);
        assert_eq!(Level::Percent(10.0).of(24 << 20), 2_516_582);
        assert_eq!(
            Thresholds::parse("memory.available<1G,memory.available<2Ki")
                .unwrap()
                .get(Signal::MemoryAvailable),
            Some(Level::Amount(2048)),
            "the last one wins"
        );
        assert_eq!(Thresholds::parse("").unwrap(), Thresholds::default());
        let d = Thresholds::parse(DEFAULT_EVICTION_HARD).unwrap();
        assert_eq!(d.0.len(), 6);
    }

    #[test]
    fn malformed_thresholds_say_which_item() {
        for bad in [
            "nodefs.available",
            "nodefs.available>10%",
            "disk.free<10%",
            "memory.available<50Mo",
            "nodefs.available<110%",
            "pid.available<5Mi",
        ] {
            let e = Thresholds::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split(',').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn bytes_read_like_kubectl() {
        assert_eq!(human_bytes(512), "512");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(24 << 20), "24.0Mi");
        assert_eq!(human_bytes(300 << 30), "300Gi");
    }
}
