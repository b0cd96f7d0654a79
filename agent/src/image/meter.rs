//! The disk budget while a layer unpacks: every byte an unpack is about to write is charged
//! here first, so a layer that expands past the budget (or below the free-disk floor) is
//! stopped after at most one read buffer, not once it is complete. A 10 MB gzip that expands
//! to 10 GiB used to fill the disk before the measured check after the layer refused it.
//!
//! Accounting: the store's measured use ([`super::gc`], which skips the `.tmp-` directories
//! of unpacks in flight) plus what every unpack in flight has charged. Charges are shared by
//! all unpacks of the store (a pull unpacks two layers at once, and pulls run side by side),
//! so concurrent unpacks cannot each spend the same headroom. When a charge would cross a
//! limit, unused images are collected first (as the check after each layer always did); only
//! if that frees too little is the unpack refused with [`ImageError::DiskBudget`].

use std::cell::Cell;
use std::sync::Mutex;

use tracing::debug;

use super::gc::{fs_stat, human};
use super::unpack::Meter;
use super::{ImageError, Inner};

/// How often (in charged bytes) the free space is measured again, on top of the accounting:
/// other writers share the disk.
const STAT_EVERY: u64 = 1 << 20;

/// Room asked of the collector when a charge crosses a limit, beyond what is charged: a
/// few reads, so it does not run at every read, yet small, so it removes no more unused
/// images than the layer needs (the rest of the layer is unknown).
const RESERVE: u64 = 64 << 10;

/// Charges of all unpacks of one store.
#[derive(Default)]
pub(crate) struct Charges {
    state: Mutex<ChargeState>,
}

#[derive(Default, Clone, Copy)]
struct ChargeState {
    /// Every byte ever charged (monotonic).
    total: u64,
    /// Charged by unpacks still running (their temporary directories are not measured).
    in_flight: u64,
}

impl Charges {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChargeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, n: u64) -> u64 {
        let mut st = self.lock();
        st.total = st.total.saturating_add(n);
        st.in_flight = st.in_flight.saturating_add(n);
        st.total
    }

    fn snapshot(&self) -> ChargeState {
        *self.lock()
    }

    fn finish(&self, own: u64) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(own);
    }
}

/// The meter of one unpack, against the store's limits. Blocking (it may collect garbage).
pub(crate) struct StoreMeter<'a> {
    inner: &'a Inner,
    digest: String,
    /// Charged by this unpack.
    own: Cell<u64>,
    since_stat: Cell<u64>,
    /// The store's size when the accounting was last based on a measurement (measured use
    /// plus the in-flight charges then), and the charge total at that moment.
    base: Cell<u64>,
    base_total: Cell<u64>,
    budget: Cell<Option<u64>>,
    /// Free space at that moment, and the floor to keep.
    avail: Cell<u64>,
    floor: Cell<u64>,
}

impl<'a> StoreMeter<'a> {
    /// Measures the store (collecting garbage if it is over its limits already).
    pub(crate) fn new(inner: &'a Inner, digest: &str) -> Result<Self, ImageError> {
        let m = StoreMeter {
            inner,
            digest: digest.to_owned(),
            own: Cell::new(0),
            since_stat: Cell::new(0),
            base: Cell::new(0),
            base_total: Cell::new(0),
            budget: Cell::new(None),
            avail: Cell::new(0),
            floor: Cell::new(0),
        };
        m.rebase(0)?;
        Ok(m)
    }

    /// Bases the accounting on a fresh measurement, collecting garbage to make `room`.
    fn rebase(&self, room: u64) -> Result<(), ImageError> {
        // Charges first, then the measurement: an unpack that finishes in between is then
        // counted twice (in flight and measured), never missed.
        let charges = self.inner.unpack_charges.snapshot();
        let report = self.inner.collect(charges.in_flight.saturating_add(room))?;
        self.base
            .set(report.usage.saturating_add(charges.in_flight));
        self.base_total.set(charges.total);
        self.budget.set(report.budget);
        self.avail.set(report.free);
        self.floor.set(report.min_free);
        Ok(())
    }

    /// Why the store is over a limit at charge total `total`, if it is.
    fn over(&self, total: u64, live_avail: Option<u64>) -> Option<String> {
        let since = total.saturating_sub(self.base_total.get());
        let size = self.base.get().saturating_add(since);
        if let Some(budget) = self.budget.get() {
            if size > budget {
                return Some(format!(
                    "unpacking layer {} would take the image store past its {} budget (stopped after {} of it)",
                    self.digest,
                    human(budget),
                    human(self.own.get())
                ));
            }
        }
        let avail = self.avail.get().saturating_sub(since);
        let avail = live_avail.map_or(avail, |live| live.min(avail));
        if avail < self.floor.get() {
            return Some(format!(
                "unpacking layer {} would leave less than {} free on the disk holding the image store (stopped after {} of it)",
                self.digest,
                human(self.floor.get()),
                human(self.own.get())
            ));
        }
        None
    }
}

impl Meter for StoreMeter<'_> {
    fn charge(&self, bytes: u64) -> Result<(), ImageError> {
        if bytes == 0 {
            return Ok(());
        }
        self.own.set(self.own.get().saturating_add(bytes));
        let total = self.inner.unpack_charges.add(bytes);
        let mut live = None;
        self.since_stat.set(self.since_stat.get() + bytes);
        if self.since_stat.get() >= STAT_EVERY {
            self.since_stat.set(0);
            live = Some(fs_stat(self.inner.layout.root())?.avail);
        }
        if self.over(total, live).is_none() {
            return Ok(());
        }
        // Over a limit by the accounting: make room as a pull always has (orphans, then
        // unused images), measure again, and stop only if that did not help.
        debug!(layer = %self.digest, charged = self.own.get(), "unpack reached a disk limit, collecting");
        self.rebase(RESERVE)?;
        match self.over(self.inner.unpack_charges.snapshot().total, None) {
            None => Ok(()),
            Some(reason) => Err(ImageError::DiskBudget(reason)),
        }
    }
}

impl Drop for StoreMeter<'_> {
    fn drop(&mut self) {
        self.inner.unpack_charges.finish(self.own.get());
    }
}
