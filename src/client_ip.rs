//! The client address: from the peer, or from X-Forwarded-For with trusted hops.
//!
//! A spoofed left part of X-Forwarded-For must never become the key: only the entry
//! `trusted_hops` places from the right (0 = the rightmost, appended by the proxy that
//! connects to us) is read. When the header is shorter than that, or that entry is not
//! an address, the peer address is used: a client that skipped our proxies gets its
//! own connection address, never a value it chose.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::policy::IpSource;

/// A client address reduced to the bytes that identify it for rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    bytes: [u8; 16],
    len: u8,
}

impl ClientIp {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    fn from_ip(ip: IpAddr, ipv6_prefix: u8) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&v4.octets());
                ClientIp { bytes, len: 4 }
            }
            IpAddr::V6(v6) => ClientIp {
                bytes: mask_v6(v6, ipv6_prefix),
                len: 16,
            },
        }
    }
}

/// Keeps the first `prefix` bits: one IPv6 host usually owns a whole /64, so per-address
/// counting of IPv6 would hand each host 2^64 fresh counters.
fn mask_v6(v6: Ipv6Addr, prefix: u8) -> [u8; 16] {
    let bits = u128::from_be_bytes(v6.octets());
    let mask = if prefix >= 128 {
        u128::MAX
    } else if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (bits & mask).to_be_bytes()
}

/// Parses a peer address as hosts report it: `1.2.3.4:5678`, `[::1]:80`, or a bare IP.
pub fn parse_addr(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.len() > 64 {
        return None;
    }
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    bare.parse::<IpAddr>().ok()
}

/// The entry `trusted_hops` places from the right of an X-Forwarded-For value.
fn xff_entry(xff: &[u8], trusted_hops: u32) -> Option<IpAddr> {
    let entry = xff.rsplit(|b| *b == b',').nth(trusted_hops as usize)?;
    parse_addr(entry)
}

/// Resolves the client address for a request.
///
/// `xff_ends_with_peer`: the proxy appended the connecting peer to X-Forwarded-For before
/// the filter saw it (Envoy with `use_remote_address`). Where it did not (Kong, APISIX
/// pass the header as received), the peer counts as that last entry, so one
/// `trusted_hops` means the same on every host: the number of trusted proxies in front.
pub fn resolve(
    source: IpSource,
    ipv6_prefix: u8,
    peer: Option<&[u8]>,
    xff: Option<&[u8]>,
    xff_ends_with_peer: bool,
) -> Option<ClientIp> {
    let from_xff = match source {
        IpSource::Xff { trusted_hops } => {
            let hops = if xff_ends_with_peer {
                Some(trusted_hops)
            } else {
                // 0 trusted proxies: the peer itself is the client.
                trusted_hops.checked_sub(1)
            };
            hops.and_then(|h| xff.and_then(|x| xff_entry(x, h)))
        }
        IpSource::Peer => None,
    };
    let ip = from_xff.or_else(|| peer.and_then(parse_addr))?;
    Some(ClientIp::from_ip(ip, ipv6_prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Vec<u8> {
        ClientIp::from_ip(s.parse().unwrap_or(IpAddr::V4([0, 0, 0, 0].into())), 128)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn peer_strips_port() {
        let got = resolve(IpSource::Peer, 64, Some(b"10.1.2.3:55012"), None, true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("10.1.2.3")));
        let got = resolve(IpSource::Peer, 128, Some(b"[2001:db8::7]:443"), None, true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("2001:db8::7")));
        let got = resolve(IpSource::Peer, 64, Some(b"10.1.2.3"), None, true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("10.1.2.3")));
    }

    #[test]
    fn xff_ignores_spoofed_left_entries() {
        let src = IpSource::Xff { trusted_hops: 0 };
        let xff = b"6.6.6.6, 7.7.7.7, 203.0.113.9";
        let got = resolve(src, 64, Some(b"127.0.0.1:1"), Some(xff), true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("203.0.113.9")));
        let src = IpSource::Xff { trusted_hops: 1 };
        let got = resolve(src, 64, Some(b"127.0.0.1:1"), Some(xff), true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("7.7.7.7")));
    }

    #[test]
    fn where_the_host_did_not_append_the_peer_it_counts_as_the_last_entry() {
        let xff = b"6.6.6.6, 203.0.113.9";
        let peer = Some(&b"192.0.2.1"[..]);
        let at = |hops, appended| {
            resolve(IpSource::Xff { trusted_hops: hops }, 64, peer, Some(xff), appended).map(|c| c.as_bytes().to_vec())
        };
        assert_eq!(at(0, false), Some(ip("192.0.2.1")), "no trusted proxy: the peer");
        assert_eq!(at(1, false), Some(ip("203.0.113.9")));
        assert_eq!(at(1, true), Some(ip("6.6.6.6")));
        assert_eq!(at(2, false), Some(ip("6.6.6.6")));
        assert_eq!(at(3, false), Some(ip("192.0.2.1")), "too short: the peer");
    }

    #[test]
    fn short_or_garbage_xff_falls_back_to_peer() {
        let src = IpSource::Xff { trusted_hops: 2 };
        let got = resolve(src, 64, Some(b"192.0.2.1:9"), Some(b"1.1.1.1"), true).map(|c| c.as_bytes().to_vec());
        assert_eq!(got, Some(ip("192.0.2.1")));
        let src = IpSource::Xff { trusted_hops: 0 };
        for junk in [&b"not-an-ip"[..], b"", b",,,", b"\xff\xfe", b"1.2.3.4\r\nx: y"] {
            let got = resolve(src, 64, Some(b"192.0.2.1:9"), Some(junk), true).map(|c| c.as_bytes().to_vec());
            assert_eq!(got, Some(ip("192.0.2.1")), "{junk:?}");
        }
    }

    #[test]
    fn ipv6_is_grouped_by_prefix_and_mapped_v4_is_v4() {
        let a = resolve(IpSource::Peer, 64, Some(b"[2001:db8:1:2::1]:1"), None, true);
        let b = resolve(IpSource::Peer, 64, Some(b"[2001:db8:1:2:ffff::9]:1"), None, true);
        let c = resolve(IpSource::Peer, 64, Some(b"[2001:db8:1:3::1]:1"), None, true);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let m = resolve(IpSource::Peer, 64, Some(b"[::ffff:10.0.0.1]:1"), None, true);
        assert_eq!(m.map(|c| c.as_bytes().to_vec()), Some(ip("10.0.0.1")));
    }

    #[test]
    fn no_address_at_all() {
        assert_eq!(resolve(IpSource::Peer, 64, None, None, true), None);
        assert_eq!(resolve(IpSource::Peer, 64, Some(b"garbage"), None, true), None);
    }
}
