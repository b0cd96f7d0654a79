//! Soft thresholds and the transition period, as kubelet's eviction manager has them.
//!
//! A signal under a **soft** threshold puts its condition under pressure at once, but
//! allows eviction only after it has stayed under for that threshold's grace period
//! (`--eviction-soft-grace-period`); a **hard** threshold allows it at once. A condition
//! stays reported until no threshold of its kind has been met for the **transition
//! period** (`--eviction-pressure-transition-period`), so a node hovering at a threshold
//! does not flap: each flap is a taint change, an event and a heartbeat on the link.
//! Pure: the caller passes the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baton_proto::PressureKind;

use super::thresholds::{Signal, Thresholds};
use super::Pressure;
use super::PressureError;

/// Grace periods of soft thresholds, kubelet's `memory.available=1m30s,nodefs.available=2m`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GracePeriods(pub BTreeMap<Signal, Duration>);

impl GracePeriods {
    pub fn parse(text: &str) -> Result<Self, PressureError> {
        let mut out = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = |why: &str| PressureError::Threshold {
                item: item.to_owned(),
                why: why.to_owned(),
            };
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| bad("expected signal=duration"))?;
            let signal = Signal::parse(name.trim()).ok_or_else(|| bad("unknown signal"))?;
            let d = humantime::parse_duration(value.trim())
                .map_err(|e| bad(&format!("bad duration: {e}")))?;
            out.insert(signal, d);
        }
        Ok(Self(out))
    }

    /// kubelet refuses a soft threshold without a grace period, and so does Baton: it
    /// would evict as a hard one does while claiming to be soft.
    pub fn check_covers(&self, soft: &Thresholds) -> Result<(), PressureError> {
        match soft.0.iter().find(|t| !self.0.contains_key(&t.signal)) {
            Some(t) => Err(PressureError::Threshold {
                item: t.signal.name().to_owned(),
                why: "a soft threshold needs a grace period (--eviction-soft-grace-period)".into(),
            }),
            None => Ok(()),
        }
    }
}

/// What the node reports and what it may evict for, after one measurement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    /// The conditions to report (held through the transition period).
    pub conditions: Vec<Pressure>,
    /// The pressures that allow eviction now: every hard one, and soft ones past grace.
    pub evict: Vec<Pressure>,
}

/// The memory of past measurements that soft thresholds and the transition period need.
#[derive(Debug, Clone, Default)]
pub struct Debounce {
    /// Since when each signal has been under its soft threshold without a break.
    soft_since: BTreeMap<Signal, Instant>,
    /// The last time each kind was under pressure, with what was measured then.
    last_met: BTreeMap<PressureKind, (Instant, Pressure)>,
}

impl Debounce {
    /// `hard` and `soft`: what [`super::pressures`] found against each set of thresholds now.
    pub fn update(
        &mut self,
        now: Instant,
        hard: Vec<Pressure>,
        soft: Vec<Pressure>,
        grace: &GracePeriods,
        transition: Duration,
    ) -> Verdict {
        self.soft_since
            .retain(|signal, _| soft.iter().any(|p| p.signal == *signal));
        let mut evict = hard.clone();
        for p in &soft {
            let since = *self.soft_since.entry(p.signal).or_insert(now);
            let wait = grace.0.get(&p.signal).copied().unwrap_or_default();
            if now.duration_since(since) >= wait && !evict.iter().any(|e| e.kind == p.kind) {
                evict.push(p.clone());
            }
        }
        // A hard pressure says more than a soft one of the same kind: report it.
        for p in hard.iter().chain(&soft) {
            match self.last_met.get(&p.kind) {
                Some((t, _)) if *t == now => {}
                _ => {
                    self.last_met.insert(p.kind, (now, p.clone()));
                }
            }
        }
        self.last_met
            .retain(|_, (t, _)| now.duration_since(*t) < transition || *t == now);
        let conditions = self.last_met.values().map(|(_, p)| p.clone()).collect();
        evict.sort_by_key(|p| p.kind as u8);
        Verdict { conditions, evict }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: PressureKind, signal: Signal, msg: &str) -> Pressure {
        Pressure {
            kind,
            signal,
            message: msg.into(),
        }
    }

    fn mem(msg: &str) -> Pressure {
        p(PressureKind::Memory, Signal::MemoryAvailable, msg)
    }

    fn kinds(v: &[Pressure]) -> Vec<PressureKind> {
        v.iter().map(|p| p.kind).collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn soft_reports_at_once_and_evicts_only_after_its_grace() {
        let grace = GracePeriods::parse("memory.available=1m30s").unwrap();
        let mut d = Debounce::default();
        let t0 = Instant::now();
        let v = d.update(t0, vec![], vec![mem("soft")], &grace, Duration::ZERO);
        assert_eq!(kinds(&v.conditions), [PressureKind::Memory]);
        assert!(v.evict.is_empty(), "not before the grace period");
        let v = d.update(
            t0 + 89 * S,
            vec![],
            vec![mem("soft")],
            &grace,
            Duration::ZERO,
        );
        assert!(v.evict.is_empty());
        let v = d.update(
            t0 + 90 * S,
            vec![],
            vec![mem("soft")],
            &grace,
            Duration::ZERO,
        );
        assert_eq!(kinds(&v.evict), [PressureKind::Memory]);
        // A break restarts the grace period.
        d.update(t0 + 91 * S, vec![], vec![], &grace, Duration::ZERO);
        let v = d.update(
            t0 + 92 * S,
            vec![],
            vec![mem("soft")],
            &grace,
            Duration::ZERO,
        );
        assert!(v.evict.is_empty(), "the grace period starts again");
    }

    #[test]
    fn hard_evicts_at_once_and_wins_over_soft() {
        let grace = GracePeriods::parse("memory.available=5m").unwrap();
        let mut d = Debounce::default();
        let t0 = Instant::now();
        let v = d.update(
            t0,
            vec![mem("hard")],
            vec![mem("soft")],
            &grace,
            Duration::ZERO,
        );
        assert_eq!(v.evict, [mem("hard")]);
        assert_eq!(v.conditions, [mem("hard")]);
    }

    #[test]
    fn a_condition_is_held_through_the_transition_period() {
        let none = GracePeriods::default();
        let mut d = Debounce::default();
        let t0 = Instant::now();
        let disk = p(PressureKind::Disk, Signal::NodefsAvailable, "full");
        let v = d.update(t0, vec![disk.clone()], vec![], &none, 300 * S);
        assert_eq!(v.conditions, std::slice::from_ref(&disk));
        let v = d.update(t0 + 10 * S, vec![], vec![], &none, 300 * S);
        assert_eq!(v.conditions, std::slice::from_ref(&disk), "held, with what was measured");
        assert!(
            v.evict.is_empty(),
            "holding a condition is no reason to evict"
        );
        let v = d.update(t0 + 299 * S, vec![], vec![], &none, 300 * S);
        assert_eq!(kinds(&v.conditions), [PressureKind::Disk]);
        let v = d.update(t0 + 300 * S, vec![], vec![], &none, 300 * S);
        assert!(v.conditions.is_empty(), "released after the period");
        // Met again inside the period: the period counts from the last time it was met.
        d.update(t0 + 400 * S, vec![disk.clone()], vec![], &none, 300 * S);
        d.update(t0 + 500 * S, vec![disk.clone()], vec![], &none, 300 * S);
        let v = d.update(t0 + 700 * S, vec![], vec![], &none, 300 * S);
        assert_eq!(kinds(&v.conditions), [PressureKind::Disk]);
        let v = d.update(t0 + 800 * S, vec![], vec![], &none, 300 * S);
        assert!(v.conditions.is_empty());
    }

    #[test]
    fn zero_transition_period_reports_only_what_is_met_now() {
        let mut d = Debounce::default();
        let t0 = Instant::now();
        d.update(
            t0,
            vec![mem("hard")],
            vec![],
            &GracePeriods::default(),
            Duration::ZERO,
        );
        let v = d.update(
            t0 + S,
            vec![],
            vec![],
            &GracePeriods::default(),
            Duration::ZERO,
        );
        assert!(v.conditions.is_empty());
    }

    #[test]
    fn grace_periods_parse_and_must_cover_every_soft_threshold() {
        let g = GracePeriods::parse("memory.available=1m30s, nodefs.available=2m").unwrap();
        assert_eq!(g.0[&Signal::MemoryAvailable], 90 * S);
        assert_eq!(g.0[&Signal::NodefsAvailable], 120 * S);
        let soft = Thresholds::parse("memory.available<100Mi").unwrap();
        g.check_covers(&soft).unwrap();
        let soft = Thresholds::parse("pid.available<10%").unwrap();
        let e = g.check_covers(&soft).unwrap_err().to_string();
        assert!(e.contains("pid.available") && e.contains("grace"), "{e}");
        for bad in ["memory.available", "disk=1m", "memory.available=soon"] {
            let e = GracePeriods::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
