//! Enrolling until it works: where the join token comes from, and the retry schedule (see
//! "Exactly once, never giving up" in the module docs of [`super`]).
//!
//! A device that boots with a wrong, expired or spent token, or before its coordinator is
//! reachable, must neither exit (systemd would restart it in a tight loop, and a first-boot
//! script would give up) nor wipe anything: it keeps trying, says why at each failure, and
//! enrolls as soon as what was wrong is put right: the coordinator comes up, or an operator
//! drops a new token into the token file. The waits grow from [`Backoff::FIRST`] to
//! [`Backoff::MAX`] with jitter, so a batch of devices flashed and booted together does not
//! hit the coordinator in lockstep.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use baton_proto::NodeName;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{enroll, IdentityError, IdentityFile};

/// Where the join token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--join-token`: checked once, before anything is sent.
    Given(String),
    /// `--join-token-file`: read (and trimmed) at each attempt, removed once enrolled.
    File(PathBuf),
}

impl TokenSource {
    /// The token, as it is now.
    pub fn read(&self) -> Result<String, IdentityError> {
        match self {
            TokenSource::Given(t) => Ok(t.clone()),
            TokenSource::File(path) => match std::fs::read_to_string(path) {
                Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
                Ok(_) => Err(IdentityError::NoTokenFile { path: path.clone() }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(IdentityError::NoTokenFile { path: path.clone() })
                }
                Err(source) => Err(IdentityError::Io {
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// Removes the token file, which is spent once the identity is written: it may sit on a
    /// boot partition anyone with the SD card can read. A failure is only logged (the
    /// device is enrolled; the token is of no use to anyone else).
    pub fn remove_spent(&self) {
        let TokenSource::File(path) = self else {
            return;
        };
        match std::fs::remove_file(path) {
            Ok(()) => {
                let _ = crate::durable::sync_parent(path);
                info!(path = %path.display(), "removed the spent join token file");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot remove the spent join token file")
            }
        }
    }
}

/// Capped exponential backoff with jitter: each wait is drawn from the upper half of the
/// current step, and the step doubles up to the cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(300);

    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            step: first,
        }
    }

    /// The next wait, in `[step / 2, step]`; then the step doubles (at most to the cap).
    pub fn next_wait(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Back to the first step (something changed: a new token).
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::FIRST, Self::MAX)
    }
}

/// How often a token file is looked at during a wait: a new token is tried within this.
const FILE_POLL: Duration = Duration::from_secs(2);

/// What to enroll as, and where.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// `<data-dir>/identity.json`; the pending key is kept beside it.
    pub identity_path: PathBuf,
    pub api: String,
    pub token: TokenSource,
    pub node: NodeName,
    pub labels: BTreeMap<String, String>,
    pub arch: String,
}

/// Enrolls, retrying every failure until it works; `None` if `shutdown` came first (a
/// SIGTERM during a wait or a request: the persisted key makes that safe at any point).
pub async fn enroll_with_retry(
    e: &Enrollment,
    backoff: Backoff,
    shutdown: impl Future<Output = ()>,
) -> Option<IdentityFile> {
    retry(&e.token, backoff, shutdown, |token| async move {
        enroll(
            &e.identity_path,
            &e.api,
            &token,
            &e.node,
            &e.labels,
            &e.arch,
        )
        .await
    })
    .await
}

/// The loop of [`enroll_with_retry`], over any `attempt` (a test double in unit tests).
async fn retry<F, Fut>(
    token: &TokenSource,
    mut backoff: Backoff,
    shutdown: impl Future<Output = ()>,
    mut attempt: F,
) -> Option<IdentityFile>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<IdentityFile, IdentityError>>,
{
    tokio::pin!(shutdown);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let read = token.read();
        let tried = read.as_ref().ok().cloned();
        let result = match read {
            Ok(t) => tokio::select! {
                r = attempt(t) => r,
                () = &mut shutdown => return None,
            },
            Err(e) => Err(e),
        };
        let err = match result {
            Ok(id) => {
                token.remove_spent();
                return Some(id);
            }
            Err(e) => e,
        };
        let wait = backoff.next_wait();
        warn!(
            attempt = attempts,
            retry_in_secs = wait.as_secs_f32().round() as u64,
            error = %err,
            "enrollment failed; will retry"
        );
        let deadline = Instant::now() + wait;
        loop {
            let poll = match token {
                TokenSource::File(_) => deadline.min(Instant::now() + FILE_POLL),
                TokenSource::Given(_) => deadline,
            };
            tokio::select! {
                () = tokio::time::sleep_until(poll) => {}
                () = &mut shutdown => return None,
            }
            if Instant::now() >= deadline {
                break;
            }
            let now = token.read().ok();
            if now.is_some() && now != tried {
                info!("a new join token: trying it now");
                backoff.reset();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn some_identity() -> IdentityFile {
        IdentityFile {
            version: super::super::FORMAT_VERSION,
            node_name: "pi-1".into(),
            private_key: String::new(),
            certificate: String::new(),
            coordinator_public_key: String::new(),
            ca_certificate: String::new(),
            labels: BTreeMap::new(),
            not_after: 0,
            coordinator_api: None,
        }
    }

    #[test]
    fn the_backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..12 {
            steps.push(b.next_wait());
        }
        let caps = [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300];
        for (w, cap) in steps.iter().zip(caps) {
            let cap = Duration::from_secs(cap);
            assert!(
                *w >= cap / 2 && *w <= cap,
                "{w:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        // Jittered: twelve draws are not all at the same point of their steps.
        let fractions: Vec<u64> = steps
            .iter()
            .zip(caps)
            .map(|(w, c)| w.as_millis() as u64 * 1000 / (c * 1000))
            .collect();
        assert!(
            fractions.iter().any(|f| *f != fractions[0]),
            "{fractions:?}"
        );
        b.reset();
        assert!(b.next_wait() <= Backoff::FIRST);
    }

    /// The tokens attempts were given, and when.
    type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

    /// Attempts that fail `fails` times, recording the token each was given and when.
    fn failing(
        fails: usize,
    ) -> (
        Seen,
        impl FnMut(String) -> std::future::Ready<Result<IdentityFile, IdentityError>>,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let f = move |t: String| {
            let mut v = s.lock().unwrap();
            v.push((t, Instant::now()));
            std::future::ready(if v.len() <= fails {
                Err(IdentityError::Refused(
                    "401 Unauthorized: join token expired".into(),
                ))
            } else {
                Ok(some_identity())
            })
        };
        (seen, f)
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_growing_waits_until_one_works() {
        let (seen, attempt) = failing(4);
        let t0 = Instant::now();
        let token = TokenSource::Given("t".into());
        let id = retry(&token, Backoff::default(), std::future::pending(), attempt).await;
        assert_eq!(id, Some(some_identity()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 5);
        let gaps: Vec<Duration> = seen
            .windows(2)
            .map(|w| w[1].1 - w[0].1)
            .chain([seen[0].1 - t0])
            .collect();
        assert_eq!(gaps[4], Duration::ZERO, "the first attempt is at once");
        for (gap, step) in gaps[..4].iter().zip([2, 4, 8, 16]) {
            let step = Duration::from_secs(step);
            assert!(
                *gap >= step / 2 && *gap <= step,
                "{gap:?} for a step of {step:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_during_a_wait_ends_the_loop() {
        let (seen, attempt) = failing(usize::MAX);
        let token = TokenSource::Given("t".into());
        let stop = tokio::time::sleep(Duration::from_secs(60));
        let id = retry(&token, Backoff::default(), stop, attempt).await;
        assert_eq!(id, None);
        // 0, ~2, ~6, ~14, ~30 s: four to six attempts in a minute, then nothing.
        let n = seen.lock().unwrap().len();
        assert!((4..=6).contains(&n), "{n} attempts");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_file_is_reread_a_new_token_is_tried_at_once_and_the_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("join-token");
        let token = TokenSource::File(path.clone());
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let attempt = move |t: String| {
            s.lock().unwrap().push((t.clone(), Instant::now()));
            std::future::ready(if t == "good" {
                Ok(some_identity())
            } else {
                Err(IdentityError::Refused("401: invalid join token".into()))
            })
        };
        let t0 = Instant::now();
        let writer = {
            let path = path.clone();
            async move {
                // No file for a while (nothing attempted), then a bad token, then the
                // good one, written in place with trailing whitespace.
                tokio::time::sleep(Duration::from_secs(5)).await;
                std::fs::write(&path, "bad\n").unwrap();
                // Long enough for the backoff to have grown past the file poll.
                tokio::time::sleep(Duration::from_secs(100)).await;
                std::fs::write(&path, "  good \n").unwrap();
                std::future::pending::<()>().await
            }
        };
        let id = tokio::select! {
            id = retry(&token, Backoff::default(), std::future::pending(), attempt) => id,
            () = writer => unreachable!(),
        };
        assert_eq!(id, Some(some_identity()));
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|(t, _)| t == "bad" || t == "good"));
        assert!(
            seen.iter().filter(|(t, _)| t == "bad").count() >= 2,
            "{seen:?}"
        );
        let (last, at) = seen.last().unwrap();
        assert_eq!(last, "good");
        // Tried within one file poll of being written (at 105 s), not at the end of a
        // backoff step that had grown to a minute.
        let at = *at - t0;
        assert!(
            at >= Duration::from_secs(105) && at <= Duration::from_secs(105) + FILE_POLL,
            "{at:?}"
        );
        assert!(!path.exists(), "the spent token file is still there");
    }

    #[test]
    fn token_files_are_trimmed_and_a_missing_or_empty_one_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let src = TokenSource::File(path.clone());
        let err = src.read().unwrap_err().to_string();
        assert!(
            err.contains("no join token in") && err.contains("/t"),
            "{err}"
        );
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(src.read(), Err(IdentityError::NoTokenFile { .. })));
        std::fs::write(&path, "bjt1.x\r\n").unwrap();
        assert_eq!(src.read().unwrap(), "bjt1.x");
        TokenSource::Given("t".into()).remove_spent();
        src.remove_spent();
        assert!(!path.exists());
    }
}
