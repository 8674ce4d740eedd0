//! The browser checks on any Host, Origin and Content-Type headers: they
//! never panic, and a Host that is an IP address (IPv6 in brackets, as a
//! Host header writes it) always passes the Host check.
#![no_main]

use cairn_util::browser::{Policy, Refusal, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("");
    let host = parts.next();
    let origin = parts.next();
    let content_type = parts.next();
    let policy = Policy { allowed_hosts: vec!["db.example".into()] };
    let request = Request { method, host, origin, content_type };
    let _ = policy.check(&request);
    // An IP address, written as a Host header writes it (IPv6 in
    // brackets), with or without a port, always passes the Host check.
    if let Some(ip) = host.and_then(|h| h.trim().parse::<std::net::IpAddr>().ok()) {
        let written = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        };
        for host in [written.clone(), format!("{written}:7001")] {
            let only_host =
                Request { method: "GET", host: Some(&host), origin: None, content_type: None };
            assert!(
                !matches!(policy.check(&only_host), Err(Refusal::Host { .. })),
                "an IP address was refused as a Host: {host:?}"
            );
        }
    }
});
