//! [`DesiredState`], the retained message with everything a node should run. Its shape
//! changed in v5 (`term`, `crons`), so its serde impls are written by hand (see
//! [`crate::wire`]).

use core::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    BVec, NodeCron, PodSpec, SealedSecret, MAX_NODE_CRONS, MAX_PODS_PER_NODE, MAX_SECRETS_PER_NODE,
};

/// Everything one node should run. Its encoding depends on the protocol version
/// ([`crate::wire`]): v4 has no `term` and no `crons`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DesiredState {
    /// Grows by one whenever the coordinator changes what this node should run.
    pub generation: u64,
    pub pods: BVec<PodSpec, MAX_PODS_PER_NODE>,
    /// The secrets this node's pods reference (env, volumes, `imagePullSecrets`), each
    /// sealed to this node's key: nothing else on the way can read them.
    pub secrets: BVec<SealedSecret, MAX_SECRETS_PER_NODE>,
    /// The term of the coordinator that leads: it grows with every new leadership (with
    /// etcd, the create revision of the leader's election key). An agent refuses a message
    /// of a lower term than the highest it accepted, so a deposed leader's late message
    /// changes nothing; a higher term is accepted whatever its generation (a new leader's
    /// word is the truth). Added in v5; a v4 peer reads and writes none (0).
    pub term: u64,
    /// The CronJobs this node fires itself, with their instants. Added in v5; a v4 peer
    /// reads and writes none.
    pub crons: BVec<NodeCron, MAX_NODE_CRONS>,
}

const DESIRED_FIELDS: [&str; 5] = ["generation", "pods", "secrets", "term", "crons"];

/// The fields of a `DesiredState` at the version being encoded or decoded.
fn desired_fields() -> &'static [&'static str] {
    if crate::wire::version() >= 5 {
        &DESIRED_FIELDS
    } else {
        &DESIRED_FIELDS[..3]
    }
}

impl Serialize for DesiredState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let fields = desired_fields();
        let mut st = s.serialize_struct("DesiredState", fields.len())?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("pods", &self.pods)?;
        st.serialize_field("secrets", &self.secrets)?;
        if fields.len() > 3 {
            st.serialize_field("term", &self.term)?;
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
                let (generation, pods, secrets) = (field!(0), field!(1), field!(2));
                let (term, crons) = match self.0 > 3 {
                    true => (field!(3), field!(4)),
                    false => (0, BVec::new()),
                };
                Ok(DesiredState {
                    generation,
                    pods,
                    secrets,
                    term,
                    crons,
                })
            }
        }
        let fields = desired_fields();
        d.deserialize_struct("DesiredState", fields, Fields(fields.len()))
    }
}
