//! Length-checked containers for wire fields.
//!
//! Short identifiers use `heapless` directly. Long or nested fields (commands, env, pod
//! lists) would make `heapless` types kilobytes large on the stack, so they are plain
//! heap types whose *decoder* refuses anything over the bound before it grows further.
//! Together with [`crate::MAX_MESSAGE_BYTES`] this bounds what one decode can allocate.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Deref;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ProtoError;

/// A UTF-8 string of at most `N` bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BString<const N: usize>(String);

impl<const N: usize> BString<N> {
    pub fn new(s: impl Into<String>) -> Result<Self, ProtoError> {
        let s = s.into();
        if s.len() > N {
            return Err(ProtoError::TooLong {
                max: N,
                got: s.len(),
            });
        }
        Ok(Self(s))
    }
    /// `s`, cut at a character boundary to fit (for human-readable text such as
    /// [`crate::Hello::last_connect_error`], where a shortened message beats none).
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(N);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self(s[..end].to_owned())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn into_string(self) -> String {
        self.0
    }
}

impl<const N: usize> Deref for BString<N> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for BString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<const N: usize> fmt::Display for BString<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<const N: usize> Serialize for BString<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de, const N: usize> Deserialize<'de> for BString<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = BString<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of at most {N} bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v.len() > N {
                    return Err(E::invalid_length(v.len(), &self));
                }
                Ok(BString(v.to_owned()))
            }
        }
        d.deserialize_str(V::<N>)
    }
}

/// A vector of at most `N` elements.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BVec<T, const N: usize>(Vec<T>);

// Not derived: the derive would demand `T: Default`, which an empty vector does not need.
impl<T, const N: usize> Default for BVec<T, N> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T, const N: usize> BVec<T, N> {
    pub fn new() -> Self {
        Self(Vec::new())
    }
    pub fn from_vec(v: Vec<T>) -> Result<Self, ProtoError> {
        if v.len() > N {
            return Err(ProtoError::TooMany {
                max: N,
                got: v.len(),
            });
        }
        Ok(Self(v))
    }
    pub fn push(&mut self, t: T) -> Result<(), ProtoError> {
        if self.0.len() >= N {
            return Err(ProtoError::TooMany { max: N, got: N + 1 });
        }
        self.0.push(t);
        Ok(())
    }
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<T, const N: usize> Deref for BVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<'a, T, const N: usize> IntoIterator for &'a BVec<T, N> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<T: fmt::Debug, const N: usize> fmt::Debug for BVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<T: Serialize, const N: usize> Serialize for BVec<T, N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for BVec<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = BVec<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a sequence of at most {N} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // Refuse a declared length over the bound before allocating anything.
                let hint = seq.size_hint().unwrap_or(0);
                if hint > N {
                    return Err(de::Error::invalid_length(hint, &self));
                }
                let mut v = Vec::with_capacity(hint);
                while let Some(x) = seq.next_element()? {
                    if v.len() == N {
                        return Err(de::Error::invalid_length(N + 1, &self));
                    }
                    v.push(x);
                }
                Ok(BVec(v))
            }
        }
        d.deserialize_seq(V::<T, N>(PhantomData))
    }
}
