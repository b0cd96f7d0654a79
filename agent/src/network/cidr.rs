//! IPv4 networks: the node's pod CIDR and the addresses in it.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::NetError;

/// An IPv4 network, e.g. `10.42.7.0/24`. The address is always the network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Net {
    /// `addr` is masked down to the network address. A pod network needs room for the gateway
    /// and at least one pod, so the prefix must be at most 30.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, NetError> {
        let cidr = || format!("{addr}/{prefix}");
        if prefix > 30 {
            return Err(NetError::InvalidCidr {
                cidr: cidr(),
                reason: "prefix must be at most 30",
            });
        }
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The `n`th address of the network (0 is the network address).
    fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + n)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip).wrapping_sub(u32::from(self.addr)) < self.size()
    }

    /// The bridge's address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.nth(1)
    }

    /// Addresses pods may get: every host but the gateway (no network or broadcast address).
    pub(super) fn pod_addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        (2..self.size() - 1).map(|n| self.nth(n))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NetError::InvalidCidr {
            cidr: s.to_owned(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDR/PREFIX"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("prefix is not a number"))?;
        Self::new(addr, prefix)
    }
}
