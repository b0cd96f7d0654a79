//! The desired state a node is told to run, whose shape changed in v5 (`term`).

use core::fmt;

use serde::{Deserialize, Serialize};

use super::{PodSpec, SealedSecret};
use crate::{BVec, MAX_PODS_PER_NODE, MAX_SECRETS_PER_NODE};

/// Everything one node should run. Its encoding depends on the protocol version
/// ([`crate::wire`]): v4 has no `term`.
#[derive(Debug, Clone, PartialEq)]
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
}

const DESIRED_FIELDS: [&str; 4] = ["generation", "pods", "secrets", "term"];

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
                    term: if self.0 > 3 { field!(3) } else { 0 },
                })
            }
        }
        let fields = desired_fields();
        d.deserialize_struct("DesiredState", fields, Fields(fields.len()))
    }
}
