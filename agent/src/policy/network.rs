//! `[network]`: the destinations a server may reach and the local addresses
//! it may bind, enforced in the kernel by cgroup `sock_addr` programs
//! (connect, sendto for UDP, bind).
//!
//! ```toml
//! [network]
//! allow = ["127.0.0.1:8080", "10.0.0.0/8:443", "[::1]:8443", "192.0.2.0/24"]
//! bind = ["127.0.0.1:3001"]   # none: every explicit bind is refused
//! ```
//!
//! An entry is an address or CIDR prefix, IPv6 in brackets when a port
//! follows, and an optional port (`*` or none: every port). Everything else
//! is refused with EPERM before a packet leaves (enforce mode) or reported
//! (monitor mode). Names are not accepted: resolving them at load time would
//! pin whatever the resolver said then.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mcpwarden_common::NET_PORTS;

/// One destination prefix with its ports, merged over all entries that name
/// the same prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetAllow {
    /// The first `allow` entry that named this prefix (for messages).
    pub rule: usize,
    /// Network address (host bits zeroed).
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
    /// `None`: every port.
    pub ports: Option<Vec<u16>>,
}

/// Parses one entry; the error says what is wrong with it.
fn parse_entry(entry: &str) -> Result<(IpAddr, u8, Option<u16>), String> {
    let entry = entry.trim();
    let (net, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("a '[' without its ']'")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected ':PORT' after ']'")?),
        };
        (inside, port)
    } else if entry.matches(':').count() > 1 {
        (entry, None) // bare IPv6, no port
    } else {
        match entry.split_once(':') {
            Some((net, port)) => (net, Some(port)),
            None => (entry, None),
        }
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((a, p)) => (
            a,
            Some(
                p.parse::<u8>()
                    .map_err(|_| format!("prefix length {p:?} is not a number"))?,
            ),
        ),
        None => (net, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an IP address (names are not accepted; write the address)")
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    if prefix > max {
        return Err(format!("prefix length {prefix} is longer than {max}"));
    }
    let port = match port {
        None | Some("*") => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not a port (1-65535 or *)")),
            Ok(p) => Some(p),
        },
    };
    Ok((mask(addr, prefix), prefix, port))
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Validates `[network] allow` or `bind`; an error is (index, message).
pub fn parse(entries: &[String]) -> Result<Vec<NetAllow>, (usize, String)> {
    let mut out: Vec<NetAllow> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (addr, prefix, port) =
            parse_entry(entry).map_err(|m| (i, format!("{entry:?}: {m}")))?;
        let index = if let Some(found) = out
            .iter()
            .position(|a| a.addr == addr && a.prefix == prefix)
        {
            found
        } else {
            out.push(NetAllow {
                rule: i,
                addr,
                prefix,
                ports: Some(Vec::new()),
            });
            out.len() - 1
        };
        let slot = &mut out[index];
        match (port, &mut slot.ports) {
            (None, ports) => *ports = None,
            (Some(_), None) => {}
            (Some(p), Some(ports)) => {
                if !ports.contains(&p) {
                    ports.push(p);
                }
                if ports.len() > NET_PORTS {
                    return Err((
                        i,
                        format!(
                            "{entry:?}: at most {NET_PORTS} ports per prefix; split the prefix"
                        ),
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(entries: &[&str]) -> Vec<NetAllow> {
        parse(&entries.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn forms_of_an_entry() {
        let a = ok(&[
            "127.0.0.1:8080",
            "10.1.2.3/8:443",
            "[::1]:8443",
            "2001:db8::/32",
            "192.0.2.0/24:*",
        ]);
        assert_eq!(
            a[0],
            NetAllow {
                rule: 0,
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 32,
                ports: Some(vec![8080])
            }
        );
        assert_eq!(
            a[1].addr,
            "10.0.0.0".parse::<IpAddr>().unwrap(),
            "host bits are cleared"
        );
        assert_eq!((a[1].prefix, a[1].ports.clone()), (8, Some(vec![443])));
        assert_eq!((a[2].prefix, a[2].ports.clone()), (128, Some(vec![8443])));
        assert_eq!((a[3].prefix, a[3].ports.clone()), (32, None));
        assert_eq!(a[4].ports, None);
    }

    #[test]
    fn entries_for_one_prefix_merge() {
        let a = ok(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1"]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ports, Some(vec![1, 2]));
        let any = ok(&["127.0.0.1:1", "127.0.0.1"]);
        assert_eq!(any[0].ports, None, "an any-port entry wins");
    }

    #[test]
    fn bad_entries_say_why() {
        let bad = |e: &str| parse(&[e.to_owned()]).unwrap_err().1;
        assert!(bad("example.com:443").contains("names are not accepted"));
        assert!(bad("10.0.0.0/33").contains("longer than 32"));
        assert!(bad("127.0.0.1:0").contains("not a port"));
        assert!(bad("[::1").contains("without its ']'"));
        assert!(bad("10.0.0.0/x").contains("not a number"));
        let many: Vec<String> = (1..=9).map(|p| format!("127.0.0.1:{p}")).collect();
        assert_eq!(parse(&many).unwrap_err().0, 8);
    }
}
