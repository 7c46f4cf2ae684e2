//! Which network addresses the service may fetch from.
//!
//! Users hand the service URLs; without a guard they could make it read cloud metadata
//! endpoints, admin consoles on loopback or anything on the private network (SSRF). The
//! guard admits only globally routable unicast addresses, unless a host or address is on
//! the configured allow-list. It is applied to the URL's host when it is an IP literal
//! (the `url` crate has already turned `127.1`, `0x7f.1` and `2130706433` into
//! `127.0.0.1`) and to every address a host name resolves to, on the first request and
//! after every redirect, so DNS names pointing inward and redirects inward are refused too.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The allow-list and policy for outgoing fetches.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allowed_hosts: HashSet<String>,
    allowed_ips: HashSet<IpAddr>,
    allow_private: bool,
}

impl AddressGuard {
    /// `allow_hosts` holds host names and IP addresses (IPv6 with or without brackets).
    pub fn new(allow_hosts: &[String], allow_private: bool) -> Self {
        let mut guard = Self {
            allow_private,
            ..Self::default()
        };
        for entry in allow_hosts {
            let entry = entry.trim().trim_start_matches('[').trim_end_matches(']');
            match entry.parse::<IpAddr>() {
                Ok(ip) => {
                    guard.allowed_ips.insert(canonical(ip));
                }
                Err(_) => {
                    guard
                        .allowed_hosts
                        .insert(entry.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        guard
    }

    /// Whether a host name is explicitly admitted (its addresses are then not checked).
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allow_private
            || self
                .allowed_hosts
                .contains(&host.trim_end_matches('.').to_ascii_lowercase())
    }

    /// Whether the service may connect to `ip`.
    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.allow_private || self.allowed_ips.contains(&canonical(ip)) || is_public(ip)
    }
}

/// IPv4-mapped IPv6 addresses are the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..=127).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // Addresses that embed an IPv4 address are judged by it: NAT64 and 6to4.
    if segments[0] == 0x0064 && segments[1] == 0xff9b {
        let v4 = Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        );
        return is_public_v4(v4);
    }
    if segments[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x2001 && segments[1] == 0x0000) // Teredo
        || segments[..6].iter().all(|s| *s == 0)) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for s in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2001::1",
        ] {
            assert!(!is_public(ip(s)), "{s} must not count as public");
        }
    }

    #[test]
    fn public_addresses_are_public() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip(s)), "{s} is public");
        }
    }

    #[test]
    fn allow_list_admits_named_hosts_and_addresses() {
        let guard = AddressGuard::new(
            &[
                "LocalHost".to_string(),
                "127.0.0.1".to_string(),
                "[::1]".to_string(),
            ],
            false,
        );
        assert!(guard.host_allowed("localhost"));
        assert!(guard.host_allowed("localhost."));
        assert!(!guard.host_allowed("example.internal"));
        assert!(guard.ip_allowed(ip("127.0.0.1")));
        assert!(guard.ip_allowed(ip("::ffff:127.0.0.1")));
        assert!(guard.ip_allowed(ip("::1")));
        assert!(!guard.ip_allowed(ip("127.0.0.2")));
        assert!(!guard.ip_allowed(ip("10.0.0.1")));
        assert!(AddressGuard::new(&[], true).ip_allowed(ip("10.0.0.1")));
    }
}
