//! What an attacker, a replayer or a deposed leader puts on the wire: envelopes built (and
//! signed, or not) outside the coordinator and the agent, for the tests that check both
//! refuse them (security, mtls, ha).

use anyhow::{ensure, Result};
use baton_proto::sign::{self, SigningKey};
use baton_proto::{BVec, Body, DesiredState, Envelope, Heartbeat, Sender};

use crate::Lab;

/// Wall-clock milliseconds, as envelopes carry them (`sent_at_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An envelope from `sender`, numbered `seq`, stamped now; signed for `topic` with `key`,
/// or left unsigned without one.
pub fn envelope(
    sender: Sender,
    seq: u64,
    body: Body,
    topic: &str,
    key: Option<&SigningKey>,
) -> Result<Envelope> {
    let mut env = Envelope::new(sender, seq, body);
    env.sent_at_ms = now_ms();
    if let Some(k) = key {
        sign::sign(&mut env, topic, k)?;
    }
    Ok(env)
}

/// An empty desired state of `term`: obeyed, it would stop every pod on the node.
pub fn empty_desired(term: u64) -> Body {
    Body::Desired(DesiredState {
        generation: 1_000_000,
        pods: BVec::new(),
        secrets: BVec::new(),
        term,
        crons: Default::default(),
    })
}

/// A heartbeat that reports nothing applied.
pub fn bare_heartbeat() -> Body {
    Body::Heartbeat(Heartbeat {
        applied_generation: 0,
        status_digest: 0,
        ..Default::default()
    })
}

/// Publishes `payload` on `topic` through the lab's plain-MQTT Mosquitto (QoS 1, retained
/// if `retained`, as desired states are), from the hub's namespace.
pub fn mosquitto_pub(lab: &Lab, topic: &str, payload: &[u8], retained: bool) -> Result<()> {
    let file = tempfile::NamedTempFile::new_in(lab.dir.path())?;
    std::fs::write(file.path(), payload)?;
    let mut cmd = lab.hub.cmd("mosquitto_pub");
    cmd.args(["-h", &lab.hub_ip(), "-p", "1883", "-q", "1"]);
    if retained {
        cmd.arg("-r");
    }
    let out = cmd.args(["-t", topic, "-f"]).arg(file.path()).output()?;
    ensure!(out.status.success(), "mosquitto_pub {topic}: {out:?}");
    Ok(())
}
