//! The `/proc/net/tcp` and `/proc/net/tcp6` census: the fallback where netlink sock_diag is not
//! permitted. Streams the files line by line through one reused buffer; a malformed line is an error
//! naming the file and line, never a panic.
//!
//! Addresses in these files are the kernel's raw 32-bit words printed in host byte order (`%08X`), so on
//! a little-endian machine each word's bytes are reversed; ports are printed already in host order.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;

use super::{Backend, Census, CensusError, CensusSpec, Count, v4, v6};

const ESTABLISHED: u8 = 0x01;

/// One parsed line: what the census needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub local_port: u16,
    pub peer: IpAddr,
    pub state: u8,
    /// Identifies the connection across censuses (hash of both endpoints; an accepted-but-not-yet-
    /// `accept()`ed socket has inode 0, so the inode alone would not do).
    pub key: u64,
}

fn hex_word(s: &str) -> Option<[u8; 4]> {
    u32::from_str_radix(s, 16).ok().map(|w| w.to_ne_bytes())
}

fn address(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => v4(hex_word(addr)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&hex_word(addr.get(i * 8..i * 8 + 8)?)?);
            }
            v6(bytes)
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses one data line of `/proc/net/tcp{,6}`. `Err` says what was wrong.
pub fn parse_line(line: &str) -> Result<Entry, String> {
    let mut fields = line.split_ascii_whitespace();
    let _slot = fields
        .next()
        .filter(|s| s.ends_with(':'))
        .ok_or("no slot number")?;
    let local = fields.next().ok_or("no local address")?;
    let remote = fields.next().ok_or("no remote address")?;
    let state = fields.next().ok_or("no state")?;
    let (_, local_port) = address(local).ok_or_else(|| format!("bad local address {local:?}"))?;
    let (peer, _) = address(remote).ok_or_else(|| format!("bad remote address {remote:?}"))?;
    let state = u8::from_str_radix(state, 16).map_err(|_| format!("bad state {state:?}"))?;
    let mut h = DefaultHasher::new();
    (local, remote).hash(&mut h);
    Ok(Entry {
        local_port,
        peer,
        state,
        key: h.finish(),
    })
}

/// Whether a socket is LISTENing on `port` (IPv4 or IPv6): the application is up.
pub fn listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|file| {
        std::fs::read_to_string(file).is_ok_and(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| parse_line(l).ok())
                .any(|e| e.state == 0x0A && e.local_port == port)
        })
    })
}

pub struct ProcCensus {
    spec: CensusSpec,
    files: Vec<PathBuf>,
    line: String,
    previous: Option<Vec<u64>>,
    current: Vec<u64>,
}

impl ProcCensus {
    pub fn new(spec: CensusSpec) -> ProcCensus {
        Self::with_files(spec, vec!["/proc/net/tcp".into(), "/proc/net/tcp6".into()])
    }

    /// Reads other files (captured fixtures in tests).
    pub fn with_files(spec: CensusSpec, files: Vec<PathBuf>) -> ProcCensus {
        ProcCensus {
            spec,
            files,
            line: String::new(),
            previous: None,
            current: Vec::new(),
        }
    }

    fn scan(&mut self, file: &PathBuf) -> Result<(), CensusError> {
        let err = |reason: String| CensusError::Proc {
            file: file.display().to_string(),
            reason,
        };
        let f = match std::fs::File::open(file) {
            Ok(f) => f,
            // No IPv6 in this kernel: nothing to count there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with("tcp6") => {
                return Ok(());
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let mut reader = BufReader::with_capacity(64 * 1024, f);
        let mut n = 0usize;
        loop {
            self.line.clear();
            n += 1;
            match reader.read_line(&mut self.line) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(err(format!("line {n}: {e}"))),
            }
            if n == 1 && self.line.trim_start().starts_with("sl") {
                continue;
            }
            if self.line.trim().is_empty() {
                continue;
            }
            let entry = parse_line(&self.line).map_err(|r| err(format!("line {n}: {r}")))?;
            if entry.state == ESTABLISHED && self.spec.counts(entry.local_port, entry.peer) {
                self.current.push(entry.key);
            }
        }
    }
}

impl Census for ProcCensus {
    fn count(&mut self) -> Result<Count, CensusError> {
        self.current.clear();
        for file in self.files.clone() {
            self.scan(&file)?;
        }
        self.current.sort_unstable();
        let arrived = match &self.previous {
            Some(prev) => self
                .current
                .iter()
                .filter(|k| prev.binary_search(k).is_err())
                .count(),
            None => 0,
        };
        let established = self.current.len();
        let prev = self.previous.get_or_insert_with(Vec::new);
        std::mem::swap(prev, &mut self.current);
        Ok(Count {
            established,
            arrived,
        })
    }

    fn backend(&self) -> Backend {
        Backend::Procfs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a little-endian machine: a listener on 8080, connections from 10.0.0.5 and
    // 127.0.0.1, one in TIME_WAIT (06), one to another port.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0500000A:1F90 0500000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0500000A:1F90 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0500000A:1F90 0600000A:D433 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: 0500000A:0050 0600000A:D434 01 00000000:00000000 00:00000000 00000000     0        0 1005 1 0000000000000000 20 4 30 10 -1
   5: 0500000A:1F90 0700000A:D435 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";
    // A dual-stack listener with a v4-mapped IPv4 client (::ffff:10.0.0.9) and an IPv6 client (fd00::2).
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000500000A:1F90 0000000000000000FFFF00000900000A:C001 01 00000000:00000000 00:00000000 00000000     0        0 2002 1 0000000000000000 20 4 30 10 -1
   2: 000000FD000000000000000001000000:1F90 000000FD000000000000000002000000:C002 01 00000000:00000000 00:00000000 00000000     0        0 2003 1 0000000000000000 20 4 30 10 -1
";

    fn census(exclude: &[&str], tcp: &str, tcp6: &str) -> (tempfile::TempDir, ProcCensus) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), tcp).unwrap();
        std::fs::write(dir.path().join("tcp6"), tcp6).unwrap();
        let spec = CensusSpec {
            ports: vec![8080],
            exclude_peers: exclude.iter().map(|c| c.parse().unwrap()).collect(),
        };
        let files = vec![dir.path().join("tcp"), dir.path().join("tcp6")];
        (dir, ProcCensus::with_files(spec, files))
    }

    #[test]
    fn counts_established_on_the_port_in_both_families() {
        let (_d, mut c) = census(&[], TCP, TCP6);
        // v4: lines 1, 2, 5 (3 is TIME_WAIT, 4 another port); v6: lines 1, 2.
        assert_eq!(
            c.count().unwrap(),
            Count {
                established: 5,
                arrived: 0
            }
        );
    }

    #[test]
    fn excluded_peers_do_not_count_also_when_v4_mapped() {
        let (_d, mut c) = census(&["127.0.0.0/8", "10.0.0.9/32", "fd00::/8"], TCP, TCP6);
        assert_eq!(c.count().unwrap().established, 2);
    }

    #[test]
    fn arrivals_are_the_connections_not_seen_before() {
        let (d, mut c) = census(&[], TCP, TCP6);
        c.count().unwrap();
        let more = format!(
            "{TCP}   6: 0500000A:1F90 0800000A:D436 01 00000000:00000000 00:00000000 00000000     0        0 1007 1 0\n"
        );
        std::fs::write(
            d.path().join("tcp"),
            more.replace(
                "   1: 0500000A:1F90 0500000A:D431 01",
                "   1: 0500000A:1F90 0500000A:D431 08",
            ),
        )
        .unwrap();
        assert_eq!(
            c.count().unwrap(),
            Count {
                established: 5,
                arrived: 1
            }
        );
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let (_d, mut c) = census(&[], "  sl  local\n   0: 0100007F:1F90 garbage 01\n", "");
        let err = c.count().unwrap_err().to_string();
        assert!(err.contains("tcp: line 2: bad remote address"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn the_line_parser_never_panics(line in ".{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn hex_looking_lines_never_panic(a in "[0-9A-F:]{0,40}", b in "[0-9A-F:]{0,40}", st in "[0-9A-F]{0,3}") {
            let _ = parse_line(&format!("0: {a} {b} {st} 0 0 0"));
        }
    }
}
