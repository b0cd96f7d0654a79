//! TCP keepalive probes on an agent's connection to the MQTT TLS front: how a `lan` agent's
//! loss is noticed within 20 s without an MQTT ping every 13 s.
//!
//! An MQTT keepalive round over TLS costs about 200 bytes on the wire (PINGREQ and PINGRESP
//! records, an ACK); a TCP keepalive probe round costs about 104 (an empty segment and its
//! ACK, outside TLS). So the front, which terminates each agent's TLS connection, asks the
//! kernel to probe the agents that ask for it (their CONNECT username,
//! [`baton_proto::broker::tcp_liveness_username`]) and the agent's MQTT keepalive can grow
//! to minutes. When the kernel declares the peer dead, reading the agent's socket fails,
//! the front drops its upstream connection to rumqttd without a DISCONNECT, and rumqttd
//! publishes the agent's last will at once.
//!
//! The kernel probes only an idle connection (nothing received for `idle`), so the
//! connection is declared dead at most `within` after the last segment received from the
//! agent, so at most `within` after the link was cut. While the front has data the agent
//! has not acknowledged, the kernel retransmits instead of probing, and `TCP_USER_TIMEOUT`
//! (`within`) bounds that from the data's first send: a cut noticed up to `idle + within`
//! after it when the coordinator happens to send at that moment.
//!
//! | asked for (`within`) | idle | interval | probes | user timeout | probe rounds a day idle |
//! |---|---|---|---|---|---|
//! | 18 s (`lan`) | 16 s | 1 s | 2 | 18 s | 5,400 (≈ 548 KiB) |
//!
//! `lan` asks for 18 s, not 20: the last will still has to reach the coordinator, and the
//! issue's bound is on the node going NotReady. Two probes 1 s apart both lost on a
//! working link end a connection the agent then makes again at once.
//!
//! Metered agents ask for nothing: their sockets get no probes.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};

/// The pause between unanswered probes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered probes before the peer is declared dead.
pub const PROBE_COUNT: u32 = 2;
/// The shortest window honoured: below it a connection would be probed every few seconds.
pub const MIN_WITHIN: Duration = Duration::from_secs(8);
/// The longest window honoured: a longer one is the MQTT keepalive's job.
pub const MAX_WITHIN: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum TcpLivenessError {
    #[error("cannot set or read TCP keepalive options: {0}")]
    Sockopt(#[from] nix::Error),
}

/// The kernel's keepalive settings for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpProbes {
    /// Nothing received for this long: the first probe goes out.
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
    /// Data unacknowledged (or probes unanswered) for this long: the connection fails.
    pub user_timeout: Duration,
}

impl TcpProbes {
    /// The probes that notice a lost peer within `within` (whole seconds), or `None` when
    /// `within` is outside [`MIN_WITHIN`]..=[`MAX_WITHIN`].
    pub fn within(within: Duration) -> Option<Self> {
        if !(MIN_WITHIN..=MAX_WITHIN).contains(&within) {
            return None;
        }
        let probing = PROBE_INTERVAL * PROBE_COUNT;
        Some(Self {
            idle: within - probing,
            interval: PROBE_INTERVAL,
            count: PROBE_COUNT,
            user_timeout: within,
        })
    }

    /// Sets them on a connected TCP socket.
    pub fn apply(&self, socket: &impl AsFd) -> Result<(), TcpLivenessError> {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        setsockopt(socket, sockopt::TcpKeepIdle, &secs(self.idle))?;
        setsockopt(socket, sockopt::TcpKeepInterval, &secs(self.interval))?;
        setsockopt(socket, sockopt::TcpKeepCount, &self.count)?;
        let ms = u32::try_from(self.user_timeout.as_millis()).unwrap_or(u32::MAX);
        setsockopt(socket, sockopt::TcpUserTimeout, &ms)?;
        setsockopt(socket, sockopt::KeepAlive, &true)?;
        Ok(())
    }

    /// What a socket has: `None` when keepalive is off (the kernel sends no probes).
    pub fn read(socket: &impl AsFd) -> Result<Option<Self>, TcpLivenessError> {
        if !getsockopt(socket, sockopt::KeepAlive)? {
            return Ok(None);
        }
        Ok(Some(Self {
            idle: Duration::from_secs(getsockopt(socket, sockopt::TcpKeepIdle)?.into()),
            interval: Duration::from_secs(getsockopt(socket, sockopt::TcpKeepInterval)?.into()),
            count: getsockopt(socket, sockopt::TcpKeepCount)?,
            user_timeout: Duration::from_millis(
                getsockopt(socket, sockopt::TcpUserTimeout)?.into(),
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_sets_the_probes() {
        let lan = TcpProbes::within(Duration::from_secs(18)).unwrap();
        assert_eq!(
            lan,
            TcpProbes {
                idle: Duration::from_secs(16),
                interval: Duration::from_secs(1),
                count: 2,
                user_timeout: Duration::from_secs(18),
            }
        );
        // Declared dead by the last probe's deadline: within the window asked for.
        assert!(lan.idle + lan.interval * lan.count <= Duration::from_secs(18));
        assert_eq!(
            TcpProbes::within(MIN_WITHIN).unwrap().idle,
            Duration::from_secs(6)
        );
        for refused in [0, 1, 7, 3601, u64::from(u32::MAX)] {
            assert_eq!(
                TcpProbes::within(Duration::from_secs(refused)),
                None,
                "{refused}"
            );
        }
    }

    #[test]
    fn probes_are_set_on_the_socket_and_read_back() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // A fresh socket has no probes: what a metered agent's connection keeps.
        assert_eq!(TcpProbes::read(&server).unwrap(), None);
        let lan = TcpProbes::within(Duration::from_secs(18)).unwrap();
        lan.apply(&server).unwrap();
        assert_eq!(TcpProbes::read(&server).unwrap(), Some(lan));
        assert_eq!(TcpProbes::read(&client).unwrap(), None);
    }
}
