//! The `Hello` an agent sends on every connect, whose shape changed in v5 (`taints`).

use core::fmt;
use core::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Capacity, Label};
use crate::{BString, BVec};

/// A node's `Hello`. Its encoding depends on the protocol version ([`crate::wire`]): v4 has
/// no `taints`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// Go-style architecture name, as Kubernetes and OCI use it: amd64, arm64, arm.
    pub arch: heapless::String<16>,
    /// OCI variant for `arm` (v6, v7), empty otherwise.
    pub arch_variant: heapless::String<8>,
    pub os: heapless::String<16>,
    pub agent_version: heapless::String<32>,
    /// What the node offers to pods: its capacity less the agent's reserve.
    pub allocatable: Capacity,
    pub labels: BVec<Label, 64>,
    /// The node's own address, where its hostPorts answer.
    pub address: Option<IpAddr>,
    /// The range pod addresses on this node come from, e.g. `10.42.7.0/24`.
    pub pod_cidr: BString<43>,
    /// The generation of desired state the agent has applied (0: none yet).
    pub applied_generation: u64,
    /// Why the agent's attempts to reach the broker failed before this connection
    /// succeeded, with advice (see [`crate::link`]); `None` if it got through at once.
    /// Added in v3; so an operator sees it in `baton describe node`.
    pub last_connect_error: Option<BString<256>>,
    /// `baton-agent --register-with-taints`: the taints the node registers with (taken
    /// when the coordinator first sees the node, as kubelet's). Added in v5; a v4 peer
    /// reads and writes none.
    pub taints: BVec<NodeTaint, 16>,
}

/// A node taint as an agent registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTaint {
    pub key: BString<317>,
    pub value: BString<63>,
    pub effect: TaintEffect,
}

/// Kubernetes' taint effects. Variants are only ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

const HELLO_FIELDS: [&str; 11] = [
    "arch",
    "arch_variant",
    "os",
    "agent_version",
    "allocatable",
    "labels",
    "address",
    "pod_cidr",
    "applied_generation",
    "last_connect_error",
    "taints",
];

/// The fields of a `Hello` at the version being encoded or decoded.
fn hello_fields() -> &'static [&'static str] {
    if crate::wire::version() >= 5 {
        &HELLO_FIELDS
    } else {
        &HELLO_FIELDS[..10]
    }
}

impl Serialize for Hello {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = hello_fields();
        let mut st = s.serialize_struct("Hello", fields.len())?;
        st.serialize_field("arch", &self.arch)?;
        st.serialize_field("arch_variant", &self.arch_variant)?;
        st.serialize_field("os", &self.os)?;
        st.serialize_field("agent_version", &self.agent_version)?;
        st.serialize_field("allocatable", &self.allocatable)?;
        st.serialize_field("labels", &self.labels)?;
        st.serialize_field("address", &self.address)?;
        st.serialize_field("pod_cidr", &self.pod_cidr)?;
        st.serialize_field("applied_generation", &self.applied_generation)?;
        st.serialize_field("last_connect_error", &self.last_connect_error)?;
        if fields.len() > 10 {
            st.serialize_field("taints", &self.taints)?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for Hello {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields(usize);
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Hello;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a Hello of {} fields", self.0)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Hello, A::Error> {
                macro_rules! field {
                    ($i:expr) => {
                        a.next_element()?
                            .ok_or_else(|| serde::de::Error::invalid_length($i, &self))?
                    };
                }
                Ok(Hello {
                    arch: field!(0),
                    arch_variant: field!(1),
                    os: field!(2),
                    agent_version: field!(3),
                    allocatable: field!(4),
                    labels: field!(5),
                    address: field!(6),
                    pod_cidr: field!(7),
                    applied_generation: field!(8),
                    last_connect_error: field!(9),
                    taints: if self.0 > 10 { field!(10) } else { BVec::new() },
                })
            }
        }
        let fields = hello_fields();
        d.deserialize_struct("Hello", fields, Fields(fields.len()))
    }
}
