//! Link profiles: how much the agent says over its link to the broker, and how soon the
//! fleet notices it is gone.
//!
//! An idle agent costs the link three things: MQTT keepalive pings (a PINGREQ, a PINGRESP
//! and a TCP ACK, about 160 bytes on the wire each round), heartbeats, and status
//! messages. Heartbeats carry nothing new while nothing changes, so the agent sends one
//! only when its content changed, and an unchanged one at most every `heartbeat_max` (a
//! backstop for a last will a broker lost). Liveness comes from the keepalive: the broker
//! drops an agent 1.5 keepalives after its last packet, or at once when its connection
//! closes, and publishes its last will, which the coordinator takes as NotReady. The
//! coordinator learns the profile from [`baton_proto::LinkProfile`], sent after each
//! Hello, so that it does not time out a quiet node that is still connected.
//!
//! | profile | liveness | keepalive | node loss noticed | unchanged heartbeat | status batched | usage sampled |
//! |---|---|---|---|---|---|---|
//! | `lan` | `keepalive` | 13 s | ≤ 19.5 s | every 10 min | no | 5 min |
//! | `lan` | `front` | 120 s | ≤ 18 s (TCP probes) | every 10 min | no | 5 min |
//! | `metered` | either | 190 s | ≤ 4.75 min | every 6 h | 1 s | 1 h |
//!
//! **Liveness** (`--link-liveness`): over TLS a 13 s MQTT keepalive alone costs about
//! 1.3 MiB a day, over the `lan` budget of 1 MiB. Behind Baton's own MQTT TLS front (the
//! coordinator's embedded broker over `mqtts://`), a `lan` agent instead asks the front,
//! in its CONNECT username ([`baton_proto::broker::tcp_liveness_username`]), to probe its
//! socket with TCP keepalives (`coordinator/src/edge/tcp_liveness.rs`: a ~104-byte round
//! every 16 s, loss noticed within 18 s), and its own MQTT keepalive rises to 120 s, which
//! now only lets the agent notice a dead front. Mosquitto has no such front, so against it
//! (and over plain `mqtt://`) the agent keeps `keepalive`. `auto`, the default, picks
//! `front` when the agent enrolled with a coordinator that said its broker is its front
//! (the enrollment answer's `brokerFront`), and `keepalive` otherwise.
//!
//! Every value can be set on its own with a flag, which wins over the profile (the e2e
//! tests use short ones).

use std::time::Duration;

/// The named profiles (`--link-profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// A link that costs nothing per byte: node loss noticed within 20 s.
    Lan,
    /// A cellular or satellite link paid by the byte: ≤ 100 KiB a day idle, node loss
    /// noticed within 5 minutes.
    Metered,
}

/// Where liveness comes from (`--link-liveness`, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Liveness {
    /// `front` behind a coordinator that said at enrollment its broker is its front,
    /// `keepalive` otherwise.
    Auto,
    /// TCP keepalive probes sent by Baton's MQTT TLS front (`mqtts://` to the
    /// coordinator's embedded broker only).
    Front,
    /// The MQTT keepalive alone (Mosquitto, plain `mqtt://`).
    Keepalive,
}

/// The window a `lan` agent asks the front to notice its loss within: 18 s, so that its
/// last will reaches the coordinator within the 20 s bound.
pub const LAN_FRONT_WITHIN: Duration = Duration::from_secs(18);

/// What a profile sets, after the flags that override it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How often the agent measures pressure and looks whether a heartbeat is due.
    pub heartbeat_every: Duration,
    /// The longest a connected agent goes without a heartbeat.
    pub heartbeat_max: Duration,
    /// The MQTT keepalive.
    pub keepalive: Duration,
    /// Asked of the front: notice this agent's loss within this, with TCP probes
    /// (`None`: no probes, liveness from the keepalive).
    pub tcp_liveness: Option<Duration>,
    /// How long status changes are gathered before one Status goes out (0: at once).
    pub status_batch: Duration,
    /// How often usage is sampled (CPU is averaged over it), and so the most often a
    /// usage report goes out (only when it moved: `crate::usage`).
    pub usage_every: Duration,
}

impl Profile {
    /// The profile's values with liveness from the MQTT keepalive.
    pub fn settings(self) -> Settings {
        self.settings_with(false)
    }

    /// The profile's values; `front`: behind Baton's MQTT TLS front, which probes.
    pub fn settings_with(self, front: bool) -> Settings {
        match self {
            // 120 s: the front's probes notice loss within 20 s; the keepalive only lets
            // the agent notice a dead front (720 rounds a day, ~143 KiB over TLS).
            Profile::Lan if front => Settings {
                keepalive: Duration::from_secs(120),
                tcp_liveness: Some(LAN_FRONT_WITHIN),
                ..Profile::Lan.settings()
            },
            // 13 s: the broker drops a silent agent after 19.5 s, within the 20 s bound.
            Profile::Lan => Settings {
                heartbeat_every: Duration::from_secs(5),
                heartbeat_max: Duration::from_secs(600),
                keepalive: Duration::from_secs(13),
                tcp_liveness: None,
                status_batch: Duration::ZERO,
                // At most 288 reports a day (~210 KiB signed over TLS with their ACKs): with
                // the front's liveness (~690 KiB) that stays within the 1 MiB budget even on
                // a board whose CPU moves at every sample. At 30 s, usage reports alone were
                // ~1.5 MiB a day on a busy host (docs/benchmarks.md).
                usage_every: Duration::from_secs(300),
            },
            // 190 s: 455 ping rounds a day (71 KiB plain, 91 KiB over TLS; 180 s measured
            // 100.5 KiB over TLS, docs/benchmarks.md), and the broker drops a silent agent
            // after 285 s, within the 5 min bound. A 1 s batch still reports a crash
            // within 2 s.
            Profile::Metered => Settings {
                heartbeat_every: Duration::from_secs(5),
                heartbeat_max: Duration::from_secs(6 * 3600),
                keepalive: Duration::from_secs(190),
                // Probes every 16 s would cost five times the metered budget.
                tcp_liveness: None,
                status_batch: Duration::from_secs(1),
                // At most 24 reports a day, and none while nothing moves.
                usage_every: Duration::from_secs(3600),
            },
        }
    }
}

impl Settings {
    /// What the coordinator is told.
    pub fn wire(&self) -> baton_proto::LinkProfile {
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        baton_proto::LinkProfile {
            keepalive_secs: secs(self.keepalive),
            heartbeat_max_secs: secs(self.heartbeat_max),
        }
    }
}

/// The agent's link flags: a profile, and its values one by one.
#[derive(Debug, Clone, clap::Args)]
pub struct LinkArgs {
    /// How frugal to be with the link to the broker: `lan` (node loss noticed within 20 s)
    /// or `metered` (≤ 100 KiB a day idle, node loss noticed within 5 minutes).
    #[arg(long, env = "BATON_LINK_PROFILE", value_enum, default_value = "lan")]
    pub link_profile: Profile,
    /// Where liveness comes from: `front` (TCP probes from Baton's MQTT TLS front, only
    /// over mqtts:// to the coordinator's embedded broker), `keepalive` (the MQTT
    /// keepalive: Mosquitto, plain mqtt://), or `auto` (`front` when the coordinator said
    /// at enrollment that its broker is its front). Only `lan` uses the probes.
    #[arg(long, env = "BATON_LINK_LIVENESS", value_enum, default_value = "auto")]
    pub link_liveness: Liveness,
    /// How often pressure is measured and a heartbeat considered (profile: 5).
    #[arg(long, env = "BATON_HEARTBEAT_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_secs: Option<u64>,
    /// The longest a connected agent goes without a heartbeat; an unchanged one is sent
    /// only this often (profile: lan 600, metered 21600). Equal to `--heartbeat-secs`,
    /// every heartbeat goes out.
    #[arg(long, env = "BATON_HEARTBEAT_MAX_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_max_secs: Option<u64>,
    /// The MQTT keepalive; the broker drops the agent after 1.5 times this without a
    /// packet (profile: lan 13, lan behind the front 120, metered 190).
    #[arg(long, env = "BATON_MQTT_KEEPALIVE_SECS", value_parser = clap::value_parser!(u64).range(1..=65535))]
    pub mqtt_keepalive_secs: Option<u64>,
    /// How long status changes are gathered before one Status goes out (profile: lan 0,
    /// metered 1000).
    #[arg(long, env = "BATON_STATUS_BATCH_MS")]
    pub status_batch_ms: Option<u64>,
    /// How often usage (`baton top`) is sampled and, when it moved, reported (profile: lan
    /// 300, metered 3600).
    #[arg(long, env = "BATON_USAGE_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub usage_secs: Option<u64>,
}

impl LinkArgs {
    /// The settings; `front`: `--link-liveness` resolved (see [`Liveness::Auto`]).
    pub fn settings(&self, front: bool) -> Settings {
        let p = self.link_profile.settings_with(front);
        Settings {
            heartbeat_every: self
                .heartbeat_secs
                .map_or(p.heartbeat_every, Duration::from_secs),
            heartbeat_max: self
                .heartbeat_max_secs
                .map_or(p.heartbeat_max, Duration::from_secs),
            keepalive: self
                .mqtt_keepalive_secs
                .map_or(p.keepalive, Duration::from_secs),
            tcp_liveness: p.tcp_liveness,
            status_batch: self
                .status_batch_ms
                .map_or(p.status_batch, Duration::from_millis),
            usage_every: self.usage_secs.map_or(p.usage_every, Duration::from_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        link: LinkArgs,
    }

    fn parse(args: &[&str]) -> Settings {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .unwrap()
            .link
            .settings(false)
    }

    #[test]
    fn profiles_set_every_value_and_flags_win() {
        assert_eq!(parse(&[]), Profile::Lan.settings());
        let m = parse(&["--link-profile", "metered"]);
        assert_eq!(m, Profile::Metered.settings());
        assert_eq!(m.keepalive, Duration::from_secs(190));
        // Node loss within the bounds: the broker waits 1.5 keepalives.
        assert!(Profile::Lan.settings().keepalive.mul_f64(1.5) <= Duration::from_secs(20));
        assert!(m.keepalive.mul_f64(1.5) <= Duration::from_secs(300));
        let o = parse(&[
            "--link-profile",
            "metered",
            "--mqtt-keepalive-secs",
            "2",
            "--heartbeat-max-secs",
            "90",
            "--status-batch-ms",
            "0",
        ]);
        assert_eq!(
            o,
            Settings {
                keepalive: Duration::from_secs(2),
                heartbeat_max: Duration::from_secs(90),
                status_batch: Duration::ZERO,
                ..m
            }
        );
        assert_eq!(o.wire().heartbeat_max_secs, 90);
        assert!(Cli::try_parse_from(["agent", "--mqtt-keepalive-secs", "0"]).is_err());
    }

    #[test]
    fn behind_the_front_lan_probes_and_metered_does_not() {
        let lan = Profile::Lan.settings_with(true);
        assert_eq!(lan.tcp_liveness, Some(Duration::from_secs(18)));
        assert_eq!(lan.keepalive, Duration::from_secs(120));
        // Only the keepalive and liveness differ from `lan` without the front.
        assert_eq!(
            Settings {
                keepalive: Duration::from_secs(13),
                tcp_liveness: None,
                ..lan
            },
            Profile::Lan.settings()
        );
        // A metered node gets no probes (and needs none: 190 s keepalive, ≤ 5 min).
        assert_eq!(
            Profile::Metered.settings_with(true),
            Profile::Metered.settings()
        );
        assert_eq!(Profile::Metered.settings().tcp_liveness, None);
        // Probes that notice loss within 18 s, whatever the keepalive flag says.
        let cli = Cli::try_parse_from(["agent", "--mqtt-keepalive-secs", "300"]).unwrap();
        assert_eq!(cli.link.link_liveness, Liveness::Auto);
        let s = cli.link.settings(true);
        assert_eq!(
            (s.keepalive, s.tcp_liveness),
            (Duration::from_secs(300), Some(LAN_FRONT_WITHIN))
        );
    }
}
