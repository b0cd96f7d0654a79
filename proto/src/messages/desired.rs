//! [`DesiredState`], the retained message with everything a node should run. Its shape
//! changed in v5 (`crons`), so its serde impls are written by hand (see [`crate::wire`]).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    BVec, NodeCron, PodSpec, SealedSecret, MAX_NODE_CRONS, MAX_PODS_PER_NODE, MAX_SECRETS_PER_NODE,
};

/// Everything a node should run. Its encoding depends on the protocol version (see
/// [`crate::wire`]): v4 has no `crons`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    /// Grows by one whenever the coordinator changes what this node should run.
    pub generation: u64,
    pub pods: BVec<PodSpec, MAX_PODS_PER_NODE>,
    /// The secrets this node's pods reference (env, volumes, `imagePullSecrets`), each
    /// sealed to this node's key: nothing else on the way can read them.
    pub secrets: BVec<SealedSecret, MAX_SECRETS_PER_NODE>,
    /// The CronJobs this node fires itself, with their instants. Added in v5; a v4 peer
    /// reads and writes none.
    pub crons: BVec<NodeCron, MAX_NODE_CRONS>,
}

const DESIRED_FIELDS: [&str; 4] = ["generation", "pods", "secrets", "crons"];

impl Serialize for DesiredState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let v5 = crate::wire::version() >= 5;
        let mut st = s.serialize_struct("DesiredState", if v5 { 4 } else { 3 })?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("pods", &self.pods)?;
        st.serialize_field("secrets", &self.secrets)?;
        if v5 {
            st.serialize_field("crons", &self.crons)?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for DesiredState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields(usize);
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = DesiredState;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a DesiredState of {} fields", self.0)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<DesiredState, A::Error> {
                macro_rules! field {
                    ($i:expr) => {
                        a.next_element()?
                            .ok_or_else(|| serde::de::Error::invalid_length($i, &self))?
                    };
                }
                Ok(DesiredState {
                    generation: field!(0),
                    pods: field!(1),
                    secrets: field!(2),
                    crons: if self.0 > 3 { field!(3) } else { BVec::new() },
                })
            }
        }
        let fields = if crate::wire::version() >= 5 {
            &DESIRED_FIELDS[..]
        } else {
            &DESIRED_FIELDS[..3]
        };
        d.deserialize_struct("DesiredState", fields, Fields(fields.len()))
    }
}
