//! Per-key async locks, so that one blob or layer is fetched or unpacked by one task at a
//! time while different keys proceed in parallel.
//!
//! The map holds a key only while someone holds or waits for its lock, so it does not grow
//! with the number of blobs ever seen. The std mutex around the map is held only to clone
//! or drop an entry, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds the lock of one key; dropping it releases the key.
pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    lock: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(map.entry(key.to_owned()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            lock,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        // Release first, then forget the key if no one else holds a handle to it: every
        // handle is cloned under the map mutex, which we hold while counting, so the count
        // cannot grow behind our back. Two handles left means the map's and ours.
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_exclusive_and_map_empties() {
        let locks = Arc::new(KeyedLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let max_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, inside, max_inside) = (locks.clone(), inside.clone(), max_inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("k").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                max_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(max_inside.load(Ordering::SeqCst), 1);
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn different_keys_do_not_block() {
        let locks = KeyedLocks::default();
        let _a = locks.lock("a").await;
        // Would deadlock if keys shared one lock.
        let _b = locks.lock("b").await;
        assert_eq!(locks.len(), 2);
    }
}
