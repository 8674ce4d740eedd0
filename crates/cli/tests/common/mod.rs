//! Ports for the process tests. A node binds its ports again at every
//! restart, so they must stay out of the kernel's ephemeral port range
//! (where port 0 picks from): there, any outgoing connection of any process
//! may hold one for minutes, and the restarted node cannot bind it.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the search starts; below it sit well-known services.
const FIRST: u32 = 20_000;

/// The first of `count` consecutive loopback ports that are free now and lie
/// below the ephemeral range (anywhere, when the kernel leaves no room).
pub fn free_ports(count: u16) -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let count = u32::from(count.max(1));
    let end = cairn_cloud::ports::avoided_range()
        .map_or(65_536, |range| u32::from(*range.start()))
        .max(FIRST + 10 * count);
    let slots = (end - FIRST) / count;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    // Tests running side by side, in one process or several, start apart.
    let mut slot = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(nanos)
        .wrapping_add(CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729));
    for _ in 0..slots {
        slot = slot.wrapping_add(1);
        let base = FIRST + (slot % slots) * count;
        let held: Vec<TcpListener> = (base..base + count)
            .map_while(|port| TcpListener::bind(("127.0.0.1", port as u16)).ok())
            .collect();
        if held.len() == count as usize {
            return base as u16;
        }
    }
    panic!("no {count} consecutive free ports between {FIRST} and {end}");
}
