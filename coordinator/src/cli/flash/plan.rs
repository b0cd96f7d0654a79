//! A plan: the changes flash makes to a boot partition, in order. Computed from the card
//! (`firstboot`), checked for room and carried out (`image`).

use std::fmt;

/// One change to the boot partition (paths relative to its root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Write { path: String, bytes: Vec<u8> },
    Rename { from: String, to: String },
    Remove(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write { path, .. } => write!(f, "writing {path}"),
            Step::Rename { from, to } => write!(f, "renaming {from} to {to}"),
            Step::Remove(p) => write!(f, "removing {p}"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub(super) fn write(&mut self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.steps.push(Step::Write {
            path: path.to_owned(),
            bytes: bytes.into(),
        });
    }

    /// Replaces the content of the write to `path` (the real token, once minted).
    pub(super) fn set(&mut self, path: &str, bytes: Vec<u8>) {
        for s in &mut self.steps {
            if let Step::Write { path: p, bytes: b } = s {
                if p == path {
                    *b = bytes.clone();
                }
            }
        }
    }
}
