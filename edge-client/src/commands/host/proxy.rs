//! The PROXY protocol v2 header `host --proxy-protocol` writes to the
//! local service before any byte of the caller's: the caller's address
//! as the router saw it, and its identity and roles as the router
//! verified them, in TLVs of the custom range the spec leaves to
//! applications (PP2_TYPE_MIN_CUSTOM 0xE0 to PP2_TYPE_MAX_CUSTOM 0xEF).
//! Built with the `ppp` crate, which HAProxy-compatible Rust servers use
//! to parse it; the tests parse it back with the same crate.

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{Addresses, Builder, Command, Protocol, Version};

use edge_client::Caller;

/// TLV type of the caller's identity name (UTF-8).
pub const TLV_IDENTITY: u8 = 0xE0;

/// TLV type of the caller's roles, joined by ',' (UTF-8; empty when it
/// has none).
pub const TLV_ROLES: u8 = 0xE1;

/// The header for `caller`, reaching the local service at `local`: a
/// PROXY command from the caller's address to `local` when the caller's
/// address is an `ip:port`, else a LOCAL command (the service then uses
/// the connection's own addresses), with the TLVs either way. Parsers
/// ignore what follows a LOCAL header's 16 bytes (HAProxy, and `ppp`
/// reads it as the address block), so without an address the service may
/// not see the identity; routers always send an `ip:port`.
pub fn header(caller: &Caller, local: SocketAddr) -> std::io::Result<Vec<u8>> {
    let builder = match addresses(&caller.address, local) {
        Some(pair) => Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            Addresses::from(pair),
        ),
        None => Builder::with_addresses(
            Version::Two | Command::Local,
            Protocol::Unspecified,
            Addresses::Unspecified,
        ),
    };
    let roles: Vec<&str> = caller.roles.iter().map(|r| r.as_str()).collect();
    builder
        .write_tlv(TLV_IDENTITY, caller.identity.as_str().as_bytes())?
        .write_tlv(TLV_ROLES, roles.join(",").as_bytes())?
        .build()
}

/// Source and destination of one family: the caller's address when it
/// parses, IPv4-mapped IPv6 addresses made IPv4 again, and the other
/// side mapped into IPv6 when only one of them is IPv6.
fn addresses(caller: &str, local: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
    let src: SocketAddr = caller.parse().ok()?;
    let (src, dst) = (unmap(src), unmap(local));
    Some(match (src.ip(), dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (src, dst),
        (IpAddr::V6(_), IpAddr::V4(d)) => {
            (src, SocketAddr::new(d.to_ipv6_mapped().into(), dst.port()))
        }
        (IpAddr::V4(s), IpAddr::V6(_)) => {
            (SocketAddr::new(s.to_ipv6_mapped().into(), src.port()), dst)
        }
    })
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Header, IPv4, IPv6};

    fn caller(address: &str, roles: &[&str]) -> Caller {
        Caller {
            identity: "app-1".to_string().try_into().unwrap(),
            roles: roles
                .iter()
                .map(|r| r.to_string().try_into().unwrap())
                .collect(),
            address: address.into(),
            router: "router-1".to_string().try_into().unwrap(),
        }
    }

    /// (kind, value) of every TLV, parsed back with the crate's parser.
    fn tlvs(h: &Header<'_>) -> Vec<(u8, Vec<u8>)> {
        h.tlvs()
            .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn the_header_parses_back_with_addresses_identity_and_roles() {
        let local: SocketAddr = "127.0.0.1:24224".parse().unwrap();
        let bytes = header(&caller("192.0.2.7:51000", &["writers", "ops"]), local).unwrap();
        let h = Header::try_from(bytes.as_slice()).unwrap();
        assert_eq!(h.len(), bytes.len(), "nothing after the header");
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.protocol, Protocol::Stream);
        assert_eq!(
            h.addresses,
            Addresses::IPv4(IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 51000, 24224))
        );
        assert_eq!(
            tlvs(&h),
            vec![
                (TLV_IDENTITY, b"app-1".to_vec()),
                (TLV_ROLES, b"writers,ops".to_vec())
            ]
        );
    }

    #[test]
    fn families_are_made_to_match() {
        let v4_local: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let v6_local: SocketAddr = "[::1]:80".parse().unwrap();
        let table: [(&str, SocketAddr, Addresses); 4] = [
            // A mapped caller address is IPv4.
            (
                "[::ffff:192.0.2.7]:5",
                v4_local,
                IPv4::new([192, 0, 2, 7], [127, 0, 0, 1], 5, 80).into(),
            ),
            (
                "[2001:db8::1]:5",
                v6_local,
                IPv6::new(
                    "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                    std::net::Ipv6Addr::LOCALHOST,
                    5,
                    80,
                )
                .into(),
            ),
            // IPv6 caller, IPv4 service: the service's address is mapped.
            (
                "[2001:db8::1]:5",
                v4_local,
                IPv6::new(
                    "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap(),
                    "::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().unwrap(),
                    5,
                    80,
                )
                .into(),
            ),
            (
                "192.0.2.7:5",
                v6_local,
                IPv6::new(
                    "::ffff:192.0.2.7".parse::<std::net::Ipv6Addr>().unwrap(),
                    std::net::Ipv6Addr::LOCALHOST,
                    5,
                    80,
                )
                .into(),
            ),
        ];
        for (address, local, want) in table {
            let bytes = header(&caller(address, &[]), local).unwrap();
            let h = Header::try_from(bytes.as_slice()).unwrap();
            assert_eq!(h.addresses, want, "{address} -> {local}");
        }
    }

    /// With no address block (AF_UNSPEC), parsers take the whole payload
    /// for the ignored address block: ppp does, and HAProxy skips the
    /// payload of a LOCAL header. The TLVs are written all the same, right
    /// after the 16-byte header, where the spec puts them.
    #[test]
    fn an_address_that_is_not_ip_port_gives_a_local_header_with_the_tlvs() {
        let local: SocketAddr = "127.0.0.1:80".parse().unwrap();
        for address in ["", "unknown", "router-side"] {
            let bytes = header(&caller(address, &[]), local).unwrap();
            let h = Header::try_from(bytes.as_slice()).unwrap();
            assert_eq!(h.len(), bytes.len(), "nothing after the header");
            assert_eq!(h.command, Command::Local, "{address:?}");
            assert_eq!(h.addresses, Addresses::Unspecified);
            let after_header: Vec<(u8, Vec<u8>)> =
                ppp::v2::TypeLengthValues::from(h.address_bytes())
                    .map(|t| t.map(|t| (t.kind, t.value.to_vec())))
                    .collect::<Result<_, _>>()
                    .unwrap();
            assert_eq!(
                after_header,
                vec![(TLV_IDENTITY, b"app-1".to_vec()), (TLV_ROLES, vec![])]
            );
        }
    }
}
