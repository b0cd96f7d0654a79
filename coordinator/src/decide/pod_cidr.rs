//! Which node holds which pod range, decided purely.
//!
//! Every node reports its own pod CIDR, and the Service table routes that range to the
//! node's address on every other node (host-gw). A node believed blindly could claim
//! another node's range and draw its pods' traffic, or a range over the Services' virtual
//! addresses. So a range is routed only to the node that holds it:
//!
//! - the first holder keeps it: nodes already holding their range (as stored) are decided
//!   first, then the others by registration time (then name), and each gets its range only
//!   if it overlaps no range granted before it;
//! - a range over the service CIDR, or one containing the node's own address, is refused;
//! - a node that changes its range goes to the back of the queue (its Hello resets it).
//!
//! The order comes from the stored nodes alone, so a restarted coordinator decides the
//! same. A refused node keeps running its pods, but gets no route and its pods are not
//! endpoints; once the holder is deleted (or moves), the next decision grants it the range.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network, its address masked to the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Range {
    network: u32,
    prefix: u8,
}

impl Ipv4Range {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Self> {
        (prefix <= 32).then(|| Self {
            network: u32::from(addr) & mask(prefix),
            prefix,
        })
    }
    fn first(self) -> u32 {
        self.network
    }
    fn last(self) -> u32 {
        self.network | !mask(self.prefix)
    }
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        (self.first()..=self.last()).contains(&u32::from(ip))
    }
    pub fn overlaps(self, other: Self) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Ipv4Range {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ip, prefix) = s.split_once('/').ok_or(())?;
        Self::new(ip.parse().map_err(|_| ())?, prefix.parse().map_err(|_| ())?).ok_or(())
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

/// What one node claims, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'a> {
    pub node: &'a str,
    /// The pod CIDR it reported; empty if none.
    pub cidr: &'a str,
    /// Its address, if it reported an IPv4 one.
    pub address: Option<Ipv4Addr>,
    /// It held this very range after the last decision (stored).
    pub held: bool,
    /// When it registered (RFC 3339, as stored): earlier claims go first.
    pub registered: &'a str,
}

/// The decision about one node's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No range reported: nothing to route, no pod IP to check.
    NoRange,
    /// The node holds its range.
    Holds(Ipv4Range),
    /// Refused, with why (for `describe node` and the event).
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Invalid {
        cidr: String,
    },
    Overlaps {
        cidr: Ipv4Range,
        holder: String,
        holder_cidr: Ipv4Range,
    },
    ServiceCidr {
        cidr: Ipv4Range,
        service_cidr: Ipv4Range,
    },
    OwnAddress {
        cidr: Ipv4Range,
        address: Ipv4Addr,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Invalid { cidr } => write!(f, "pod CIDR {cidr:?} is not an IPv4 network"),
            Refusal::Overlaps {
                cidr,
                holder,
                holder_cidr,
            } => write!(
                f,
                "pod CIDR {cidr} overlaps {holder_cidr}, held by node {holder} (first holder \
                 keeps it)"
            ),
            Refusal::ServiceCidr { cidr, service_cidr } => write!(
                f,
                "pod CIDR {cidr} overlaps the service CIDR {service_cidr}"
            ),
            Refusal::OwnAddress { cidr, address } => {
                write!(
                    f,
                    "pod CIDR {cidr} contains the node's own address {address}"
                )
            }
        }
    }
}

/// Decides every node's range (module docs). The answer has one verdict per claim.
pub fn decide(claims: &[Claim<'_>], service_cidr: Ipv4Range) -> BTreeMap<String, Verdict> {
    let mut order: Vec<&Claim<'_>> = claims.iter().collect();
    order.sort_by_key(|c| (!c.held, c.registered, c.node));
    // Granted ranges by their first address; they never overlap, so a new range can only
    // overlap the one starting at or before it or the first one starting after it.
    let mut granted: BTreeMap<u32, (Ipv4Range, &str)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for c in order {
        let verdict = if c.cidr.is_empty() {
            Verdict::NoRange
        } else {
            match c.cidr.parse::<Ipv4Range>() {
                Err(()) => Verdict::Refused(Refusal::Invalid {
                    cidr: c.cidr.to_owned(),
                }),
                Ok(cidr) => match refusal(cidr, c, &granted, service_cidr) {
                    Some(r) => Verdict::Refused(r),
                    None => {
                        granted.insert(cidr.first(), (cidr, c.node));
                        Verdict::Holds(cidr)
                    }
                },
            }
        };
        out.insert(c.node.to_owned(), verdict);
    }
    out
}

fn refusal(
    cidr: Ipv4Range,
    c: &Claim<'_>,
    granted: &BTreeMap<u32, (Ipv4Range, &str)>,
    service_cidr: Ipv4Range,
) -> Option<Refusal> {
    if cidr.overlaps(service_cidr) {
        return Some(Refusal::ServiceCidr { cidr, service_cidr });
    }
    if let Some(address) = c.address.filter(|a| cidr.contains(*a)) {
        return Some(Refusal::OwnAddress { cidr, address });
    }
    let before = granted.range(..=cidr.first()).next_back();
    let after = granted.range(cidr.first()..).next();
    before
        .into_iter()
        .chain(after)
        .map(|(_, v)| v)
        .find(|(held, _)| held.overlaps(cidr))
        .map(|(held, holder)| Refusal::Overlaps {
            cidr,
            holder: (*holder).to_owned(),
            holder_cidr: *held,
        })
}

#[cfg(test)]
mod tests;
