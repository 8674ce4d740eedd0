//! The kernel's ephemeral port range, which host ports must stay out of.
//!
//! A host keeps its ports for life: its node and agent bind them again at
//! every start. The kernel gives every outgoing TCP connection a local port
//! from its ephemeral range (`net.ipv4.ip_local_port_range`, 32768–60999 by
//! default on Linux), and a listener cannot bind a port a connection holds.
//! A host port inside that range is therefore taken, now and then, by some
//! process's outgoing connection (a keep-alive HTTP connection can hold it
//! for minutes), and the host's node cannot start until it is let go: a
//! joining node that cannot bind its peer port leaves a new configuration
//! without the member it counts on. So the local provider never gives a
//! host a port in that range.

use std::ops::RangeInclusive;

use crate::inventory::{Ports, PORTS_PER_HOST};

/// Where Linux says which local ports outgoing connections take.
const RANGE_FILE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The ports the kernel hands to outgoing connections, when it says (Linux);
/// `None` elsewhere or when the file does not read as two ports.
pub fn ephemeral_range() -> Option<RangeInclusive<u16>> {
    parse_range(&std::fs::read_to_string(RANGE_FILE).ok()?)
}

/// The ephemeral range when host ports can stay out of it: when ports from
/// 1024 up to it leave room for a host. (A kernel that hands out nearly every
/// port leaves no choice; its hosts take their chances.)
pub fn avoided_range() -> Option<RangeInclusive<u16>> {
    ephemeral_range().filter(|range| u32::from(*range.start()) > 1024 + PORTS_PER_HOST)
}

/// "LOW<whitespace>HIGH", as the kernel writes it.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let (low, high) = (fields.next()?.ok()?, fields.next()?.ok()?);
    (fields.next().is_none() && low <= high).then_some(low..=high)
}

impl Ports {
    /// Whether any of the three ports falls in `range`.
    pub fn overlap(&self, range: &RangeInclusive<u16>) -> bool {
        [self.api, self.peer, self.agent].iter().any(|port| range.contains(port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_format_parses_and_nonsense_does_not() {
        assert_eq!(parse_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_range(""), None);
        assert_eq!(parse_range("32768"), None);
        assert_eq!(parse_range("60999 32768"), None);
        assert_eq!(parse_range("1 2 3"), None);
        assert_eq!(parse_range("a b"), None);
        assert_eq!(parse_range("70000 80000"), None);
    }

    #[test]
    fn a_host_overlaps_when_any_of_its_ports_does() {
        let range = 32768..=60999;
        let ports = |api| Ports { api, peer: api + 1, agent: api + 2 };
        assert!(!ports(7001).overlap(&range));
        assert!(ports(32766).overlap(&range), "its agent port is 32768");
        assert!(ports(60999).overlap(&range));
        assert!(!ports(61000).overlap(&range));
    }
}
