//! Address resolution with Docker's `host-gateway` name.
//!
//! Baton has no Services or DNS yet, so a pod reaches a store that publishes a hostPort on
//! its node through the node's bridge address, which is the pod's default gateway. Writing
//! `host-gateway:6379` means "port 6379 on my node", like `--add-host=x:host-gateway` in
//! Docker. It is resolved on every connect, so a pod that moves keeps working.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

pub const HOST_GATEWAY: &str = "host-gateway";

/// The IPv4 default gateway from a `/proc/net/route` table, if there is one.
///
/// The kernel prints each address as the raw 32-bit value in host byte order, so the
/// bytes in memory order (`to_ne_bytes`) are the address's octets on any endianness.
pub fn parse_default_gateway(route_table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    route_table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gw, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u32::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || flags & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY {
            return None;
        }
        let gw = u32::from_str_radix(gw, 16).ok()?;
        Some(Ipv4Addr::from(gw.to_ne_bytes()))
    })
}

/// This host's (or pod's) IPv4 default gateway.
pub fn default_gateway() -> io::Result<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    parse_default_gateway(&table).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "host-gateway: no IPv4 default route in /proc/net/route",
        )
    })
}

/// Resolves `host:port`, where host may be `host-gateway`.
pub fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} is not host:port"),
        )
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host == HOST_GATEWAY {
        return Ok(vec![SocketAddr::from((default_gateway()?, port))]);
    }
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr}: no addresses"),
        ));
    }
    Ok(addrs)
}

/// This machine's (the container's) host name, for telling replicas apart.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A pod's table on a little-endian machine: default via 10.244.1.1, plus the local net.
    const POD: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth0\t00000000\t0101F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";

    #[test]
    fn finds_the_default_gateway() {
        let want = if cfg!(target_endian = "little") {
            Ipv4Addr::new(10, 244, 1, 1)
        } else {
            Ipv4Addr::new(1, 1, 244, 10)
        };
        assert_eq!(parse_default_gateway(POD), Some(want));
    }

    #[test]
    fn no_default_route_means_none() {
        let header_only = POD.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_default_gateway(&header_only), None);
        assert_eq!(parse_default_gateway(""), None);
        // A default route that is down does not count.
        assert_eq!(
            parse_default_gateway(&POD.replace("\t0003\t", "\t0002\t")),
            None
        );
    }

    #[test]
    fn resolves_plain_addresses_and_rejects_junk() {
        assert_eq!(
            resolve("127.0.0.1:6379").unwrap(),
            vec!["127.0.0.1:6379".parse().unwrap()]
        );
        assert!(resolve("127.0.0.1").is_err());
        assert!(resolve("127.0.0.1:http").is_err());
    }
}
