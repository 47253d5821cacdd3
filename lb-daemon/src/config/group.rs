//! keepalived's `virtual_server_group`: the (VIP, port)s of one service, written in the
//! service's own table (`virtual_server_group = ["192.0.2.10-20 80", "192.0.2.10 443"]`).
//!
//! An entry is keepalived's: `ADDRESS [PORT]`, where ADDRESS is an address, a range
//! (`192.0.2.10-20`, the last octet; `192.0.2.10-192.0.2.20`; IPv6 `2001:db8::10-1f`, the
//! last group in hex, as keepalived reads it) or a prefix (`192.0.2.0/28`), and a missing
//! port (or 0) is every port. keepalived's `fwmark N` entries have no counterpart: the
//! addresses and ports the mark stands for are listed instead.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The most keys one group may expand to: each is a map entry, and a typo in a range
/// (`-255` meant as `-25`) should be an error rather than a surprise.
pub const MAX_GROUP_KEYS: usize = 1024;

/// The (VIP, port)s of one entry.
pub fn entry(text: &str) -> Result<Vec<(IpAddr, u16)>, String> {
    let mut words = text.split_whitespace();
    let Some(first) = words.next() else {
        return Err("an empty entry".into());
    };
    if first == "fwmark" {
        return Err(
            "lb-daemon has no firewall-mark services: list the addresses and ports the mark \
             stands for (`\"192.0.2.10 80\"`, `\"192.0.2.10 443\"`): one service, one \
             persistence table"
                .into(),
        );
    }
    let port = match words.next() {
        None => 0,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port (0..=65535)"))?,
    };
    if let Some(extra) = words.next() {
        return Err(format!(
            "{extra:?}: expected `ADDRESS [PORT]` (ADDRESS an address, a range or a prefix)"
        ));
    }
    Ok(addresses(first)?.into_iter().map(|a| (a, port)).collect())
}

/// The addresses of `a`, `a-b` or `a/n`.
fn addresses(text: &str) -> Result<Vec<IpAddr>, String> {
    let bad = || format!("{text:?} is not an address, a range or a prefix");
    let (start, end) = if let Some((a, b)) = text.split_once('-') {
        let start: IpAddr = a.parse().map_err(|_| bad())?;
        let end = match (start, b.parse::<IpAddr>()) {
            (s, Ok(e)) if s.is_ipv4() == e.is_ipv4() => e,
            (_, Ok(_)) => return Err(format!("{text:?}: both ends in one address family")),
            // keepalived's short forms: the last octet (decimal), the last group (hex).
            (IpAddr::V4(s), Err(_)) => {
                let last: u8 = b.parse().map_err(|_| bad())?;
                let [x, y, z, _] = s.octets();
                IpAddr::V4(Ipv4Addr::new(x, y, z, last))
            }
            (IpAddr::V6(s), Err(_)) => {
                let last = u16::from_str_radix(b, 16).map_err(|_| bad())?;
                let mut g = s.segments();
                g[7] = last;
                IpAddr::V6(Ipv6Addr::from(g))
            }
        };
        (start, end)
    } else if let Some((a, n)) = text.split_once('/') {
        let start: IpAddr = a.parse().map_err(|_| bad())?;
        let bits = if start.is_ipv4() { 32 } else { 128 };
        let n: u32 = n
            .parse()
            .ok()
            .filter(|n| *n <= bits)
            .ok_or_else(|| format!("{text:?}: a prefix length is 0..={bits}"))?;
        let host = if n == bits {
            0
        } else {
            u128::MAX >> (128 - (bits - n))
        };
        if number(start) & host != 0 {
            return Err(format!(
                "{text:?}: the address has bits set past the prefix (keepalived refuses it too)"
            ));
        }
        (start, from_number(start, number(start) | host))
    } else {
        let a: IpAddr = text.parse().map_err(|_| bad())?;
        (a, a)
    };
    let (s, e) = (number(start), number(end));
    if e < s {
        return Err(format!("{text:?}: the range ends before it starts"));
    }
    if e - s >= MAX_GROUP_KEYS as u128 {
        return Err(format!(
            "{text:?} holds {} addresses: a group holds at most {MAX_GROUP_KEYS} keys",
            e - s + 1
        ));
    }
    Ok((s..=e).map(|n| from_number(start, n)).collect())
}

fn number(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_number(family: IpAddr, n: u128) -> IpAddr {
    match family {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[(IpAddr, u16)]) -> Vec<String> {
        v.iter().map(|(a, p)| format!("{a} {p}")).collect()
    }

    #[test]
    fn keepalived_entries() {
        assert_eq!(ips(&entry("192.0.2.10 80").unwrap()), ["192.0.2.10 80"]);
        assert_eq!(
            ips(&entry("192.0.2.10-12 443").unwrap()),
            ["192.0.2.10 443", "192.0.2.11 443", "192.0.2.12 443"]
        );
        assert_eq!(entry("192.0.2.10-192.0.2.12").unwrap().len(), 3);
        assert_eq!(
            ips(&entry("2001:db8::ffff-2001:db8::1:1 80").unwrap()),
            ["2001:db8::ffff 80", "2001:db8::1:0 80", "2001:db8::1:1 80"],
            "a full end address crosses groups"
        );
        assert_eq!(
            ips(&entry("192.0.2.8/30").unwrap()),
            ["192.0.2.8 0", "192.0.2.9 0", "192.0.2.10 0", "192.0.2.11 0"]
        );
        assert_eq!(
            ips(&entry("2001:db8::e-10 80").unwrap()),
            ["2001:db8::e 80", "2001:db8::f 80", "2001:db8::10 80"]
        );
        assert_eq!(entry("2001:db8::1").unwrap()[0].1, 0, "no port: every port");
    }

    #[test]
    fn bad_entries_say_why() {
        for (text, want) in [
            ("fwmark 1", "no firewall-mark services"),
            ("192.0.2.20-10 80", "ends before it starts"),
            ("2001:db8::-2001:db8::1:0", "at most 1024"),
            ("192.0.2.1/24", "bits set past the prefix"),
            ("192.0.2.0/33", "0..=32"),
            ("192.0.2.1-2001:db8::1", "one address family"),
            ("192.0.2.1 http", "not a port"),
            ("192.0.2.1 80 tcp", "expected `ADDRESS [PORT]`"),
            ("www.example.com 80", "not an address"),
            ("", "empty"),
        ] {
            let e = entry(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
