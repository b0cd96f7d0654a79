//! Usage numbers for `baton top` and `/metrics` ([`baton_proto::NodeUsage`]): the node's CPU
//! (from `/proc/stat`), memory in use, data disk and hottest thermal zone, and each pod's CPU
//! and memory working set from its cgroup.
//!
//! Frugal by design: the agent samples once per link profile's `usage_every` (CPU is the
//! average over that window) and sends a report only when something moved beyond
//! [`moved`]'s thresholds since the last one it sent, plus once after every Hello (the
//! coordinator keeps usage in memory only). An idle board sends nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Instant;

use baton_proto::{BString, BVec, NodeUsage, PodUsage};

/// The node loop's usage state.
#[derive(Debug, Default)]
pub struct UsageState {
    pub counters: Option<Counters>,
    /// When the last sample was taken (the node loop's clock, ms).
    pub sampled: Option<u64>,
    /// The last sample, and the last report that went out.
    pub last: Option<NodeUsage>,
    pub sent: Option<NodeUsage>,
    /// A Hello went out: send the last sample again (the coordinator keeps none).
    pub resend: bool,
}

/// Cumulative counters from one sample, to turn the next one's into rates.
#[derive(Debug, Clone)]
pub struct Counters {
    at: Instant,
    /// `/proc/stat`'s busy and total jiffies of all CPUs.
    node: Option<(u64, u64)>,
    /// CPU nanoseconds of each pod's cgroup, by uid.
    pods: BTreeMap<String, u64>,
}

/// One pod's raw reading: uid, cumulative CPU ns, memory working set.
pub type PodReading = (String, Option<u64>, Option<u64>);

/// The readings of one sample, before rates.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub node_cpu: Option<(u64, u64)>,
    pub memory: Option<(u64, u64)>,
    pub disk: Option<(u64, u64)>,
    pub temperature: Option<i32>,
    pub pods: Vec<PodReading>,
}

/// Turns `now` into a report, with CPU rates against `prev` (0 where there is no earlier
/// counter), and the counters for the next sample.
pub fn rates(
    prev: Option<&Counters>,
    now: Reading,
    at: Instant,
    cpus: u32,
) -> (NodeUsage, Counters) {
    let node_cpu = match (prev.and_then(|p| p.node), now.node_cpu) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            let share = (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64;
            (share * f64::from(cpus) * 1000.0).round() as u32
        }
        _ => 0,
    };
    let window_ns = prev.map_or(0, |p| at.saturating_duration_since(p.at).as_nanos() as u64);
    let mut counters = BTreeMap::new();
    let pods = now
        .pods
        .iter()
        .filter_map(|(uid, cpu_ns, mem)| {
            if let Some(ns) = cpu_ns {
                counters.insert(uid.clone(), *ns);
            }
            let before = prev.and_then(|p| p.pods.get(uid));
            let cpu_millis = match (before, cpu_ns) {
                (Some(b), Some(n)) if window_ns > 0 => {
                    (n.saturating_sub(*b) as u128 * 1000 / u128::from(window_ns)) as u32
                }
                _ => 0,
            };
            Some(PodUsage {
                uid: BString::new(uid.as_str()).ok()?,
                cpu_millis,
                memory_bytes: mem.unwrap_or(0),
            })
        })
        .take(baton_proto::MAX_PODS_PER_NODE)
        .collect();
    let (mem_avail, mem_total) = now.memory.unwrap_or((0, 0));
    let (disk_avail, disk_total) = now.disk.unwrap_or((0, 0));
    let usage = NodeUsage {
        cpu_millis: node_cpu,
        memory_bytes: mem_total.saturating_sub(mem_avail),
        disk_used_bytes: disk_total.saturating_sub(disk_avail),
        disk_total_bytes: disk_total,
        temperature_millicelsius: now.temperature,
        pods: BVec::from_vec(pods).unwrap_or_default(),
    };
    let counters = Counters {
        at,
        node: now.node_cpu,
        pods: counters,
    };
    (usage, counters)
}

/// Whether `now` differs from `sent` enough to be worth a message: a pod came or went, or a
/// number moved by more than its threshold (CPU 100m or 20% for the node, 50m or 20% for a
/// pod; memory 16 MiB or 10% for the node, 4 MiB or 10% for a pod; disk 1% of its size;
/// temperature 2 °C).
pub fn moved(sent: &NodeUsage, now: &NodeUsage) -> bool {
    fn beyond(a: u64, b: u64, floor: u64, percent: u64) -> bool {
        a.abs_diff(b) > floor.max(a.max(b) * percent / 100)
    }
    const MIB: u64 = 1 << 20;
    let pods_moved = sent.pods.len() != now.pods.len()
        || sent.pods.iter().zip(now.pods.iter()).any(|(a, b)| {
            a.uid != b.uid
                || beyond(a.cpu_millis.into(), b.cpu_millis.into(), 50, 20)
                || beyond(a.memory_bytes, b.memory_bytes, 4 * MIB, 10)
        });
    pods_moved
        || beyond(sent.cpu_millis.into(), now.cpu_millis.into(), 100, 20)
        || beyond(sent.memory_bytes, now.memory_bytes, 16 * MIB, 10)
        || sent.disk_used_bytes.abs_diff(now.disk_used_bytes) > now.disk_total_bytes / 100
        || match (sent.temperature_millicelsius, now.temperature_millicelsius) {
            (Some(a), Some(b)) => a.abs_diff(b) > 2000,
            (a, b) => a.is_some() != b.is_some(),
        }
}

/// Busy and total jiffies of all CPUs (the `cpu` line of `/proc/stat`): busy is all but
/// idle and iowait.
pub fn node_cpu() -> Option<(u64, u64)> {
    parse_stat(&fs::read_to_string("/proc/stat").ok()?)
}

fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum(); // guest time is already in user
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The hottest thermal zone under `dir` (`/sys/class/thermal`), millidegrees Celsius.
pub fn temperature(dir: &Path) -> Option<i32> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            fs::read_to_string(e.path().join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod(uid: &str, cpu: u32, mem: u64) -> PodUsage {
        PodUsage {
            uid: BString::new(uid).unwrap(),
            cpu_millis: cpu,
            memory_bytes: mem,
        }
    }

    fn usage(cpu: u32, mem: u64, pods: Vec<PodUsage>) -> NodeUsage {
        NodeUsage {
            cpu_millis: cpu,
            memory_bytes: mem,
            disk_used_bytes: 50 << 30,
            disk_total_bytes: 100 << 30,
            temperature_millicelsius: Some(45_000),
            pods: BVec::from_vec(pods).unwrap(),
        }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let t0 = Instant::now();
        let first = Reading {
            node_cpu: Some((1_000, 10_000)),
            memory: Some((3 << 30, 4 << 30)),
            disk: Some((60, 100)),
            temperature: Some(51_000),
            pods: vec![("a".into(), Some(1_000_000_000), Some(8 << 20))],
        };
        let (u, c) = rates(None, first, t0, 4);
        assert_eq!(u.cpu_millis, 0, "no rate without an earlier sample");
        assert_eq!(u.memory_bytes, 1 << 30);
        assert_eq!((u.disk_used_bytes, u.disk_total_bytes), (40, 100));
        let second = Reading {
            // 500 of 1000 jiffies busy on 4 CPUs: 2 cores.
            node_cpu: Some((1_500, 11_000)),
            memory: Some((3 << 30, 4 << 30)),
            disk: Some((60, 100)),
            temperature: None,
            // 0.25 s of CPU in a 1 s window: 250m.
            pods: vec![("a".into(), Some(1_250_000_000), Some(9 << 20))],
        };
        let (u, _) = rates(Some(&c), second, t0 + Duration::from_secs(1), 4);
        assert_eq!(u.cpu_millis, 2000);
        assert_eq!(u.pods.len(), 1);
        assert_eq!(u.pods[0].cpu_millis, 250);
        assert_eq!(u.pods[0].memory_bytes, 9 << 20);
    }

    #[test]
    fn only_real_moves_are_worth_a_message() {
        const MIB: u64 = 1 << 20;
        let base = usage(300, 1024 * MIB, vec![pod("a", 100, 20 * MIB)]);
        // Noise: a few millicores, a few MiB.
        assert!(!moved(
            &base,
            &usage(330, 1030 * MIB, vec![pod("a", 110, 21 * MIB)])
        ));
        // Each threshold on its own.
        assert!(moved(
            &base,
            &usage(600, 1024 * MIB, vec![pod("a", 100, 20 * MIB)])
        ));
        assert!(moved(
            &base,
            &usage(300, 1300 * MIB, vec![pod("a", 100, 20 * MIB)])
        ));
        assert!(moved(
            &base,
            &usage(300, 1024 * MIB, vec![pod("a", 200, 20 * MIB)])
        ));
        assert!(moved(
            &base,
            &usage(300, 1024 * MIB, vec![pod("a", 100, 30 * MIB)])
        ));
        assert!(moved(&base, &usage(300, 1024 * MIB, vec![])));
        assert!(moved(
            &base,
            &usage(300, 1024 * MIB, vec![pod("b", 100, 20 * MIB)])
        ));
        let mut hot = base.clone();
        hot.temperature_millicelsius = Some(48_000);
        assert!(moved(&base, &hot));
        let mut full = base.clone();
        full.disk_used_bytes += 2 << 30;
        assert!(moved(&base, &full));
    }

    #[test]
    fn proc_stat_and_thermal_zones() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_stat(stat), Some((150, 1000)));
        let dir = tempfile::tempdir().unwrap();
        for (zone, t) in [("thermal_zone0", "41000\n"), ("thermal_zone1", "56500\n")] {
            fs::create_dir(dir.path().join(zone)).unwrap();
            fs::write(dir.path().join(zone).join("temp"), t).unwrap();
        }
        fs::create_dir(dir.path().join("cooling_device0")).unwrap();
        assert_eq!(temperature(dir.path()), Some(56_500));
        assert_eq!(temperature(&dir.path().join("none")), None);
    }
}
