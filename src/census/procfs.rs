//! The `/proc/net/tcp` and `/proc/net/tcp6` census: the fallback where netlink sock_diag is not
//! permitted. Streams the files line by line through one reused buffer; a malformed line is an error
//! naming the file and line, never a panic (a format this parser does not know must not pass for "no
//! connections").
//!
//! Addresses in these files are the kernel's raw 32-bit words printed in host byte order (`%08X`), so on
//! a little-endian machine each word's bytes are reversed; ports are printed already in host order.
//! IPv4 clients of a dual-stack listener appear in `tcp6` as `::ffff:a.b.c.d`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use super::{Backend, Census, CensusError, CensusSpec, Count, v4, v6};

const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;
const FILES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// One parsed line: what the census needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub local: IpAddr,
    pub local_port: u16,
    pub peer: IpAddr,
    pub state: u8,
    /// Identifies the connection across censuses (hash of both endpoints; an accepted-but-not-yet-
    /// `accept()`ed socket has inode 0, so the inode alone would not do).
    pub key: u64,
}

fn hex_word(s: &str) -> Option<[u8; 4]> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().map(|w| w.to_ne_bytes())
}

fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

fn address(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port_hex) = s.split_once(':')?;
    let port = port(port_hex)?;
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

/// The slot, local address, remote address and state fields of a data line.
fn fields(line: &str) -> Result<(&str, &str, &str), String> {
    let mut fields = line.split_ascii_whitespace();
    fields
        .next()
        .filter(|s| s.len() > 1 && s.ends_with(':'))
        .ok_or("no slot number")?;
    let local = fields.next().ok_or("no local address")?;
    let remote = fields.next().ok_or("no remote address")?;
    let state = fields.next().ok_or("no state")?;
    Ok((local, remote, state))
}

fn state(s: &str) -> Result<u8, String> {
    if s.len() != 2 {
        return Err(format!("bad state {s:?}"));
    }
    u8::from_str_radix(s, 16).map_err(|_| format!("bad state {s:?}"))
}

/// Parses one data line of `/proc/net/tcp{,6}`. `Err` says what was wrong.
pub fn parse_line(line: &str) -> Result<Entry, String> {
    let (local, remote, st) = fields(line)?;
    let (local_ip, local_port) =
        address(local).ok_or_else(|| format!("bad local address {local:?}"))?;
    let (peer, _) = address(remote).ok_or_else(|| format!("bad remote address {remote:?}"))?;
    Ok(Entry {
        local: local_ip,
        local_port,
        peer,
        state: state(st)?,
        key: key(local, remote),
    })
}

fn key(local: &str, remote: &str) -> u64 {
    let mut h = DefaultHasher::new();
    (local, remote).hash(&mut h);
    h.finish()
}

/// Reads `file` line by line into one reused buffer, calling `each` with every data line. A missing
/// `tcp6` is a kernel without IPv6: nothing there.
fn scan(
    file: &Path,
    line: &mut Vec<u8>,
    mut each: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), CensusError> {
    let name = || file.display().to_string();
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.ends_with("tcp6") => {
            return Ok(());
        }
        Err(source) => {
            return Err(CensusError::ProcRead {
                file: name(),
                source,
            });
        }
    };
    // The kernel resumes a read of this file where the previous one ended, by position: a socket
    // opened or closed meanwhile before that position shifts it, so a line is skipped or read twice.
    // Large reads (about 1700 lines each) leave fewer such seams in a large table.
    let mut reader = BufReader::with_capacity(256 * 1024, f);
    let mut n = 0usize;
    loop {
        line.clear();
        n += 1;
        let at_line = |reason: String| CensusError::ProcLine {
            file: name(),
            line: n,
            reason,
        };
        match reader.read_until(b'\n', line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(at_line(e.to_string())),
        }
        let text = std::str::from_utf8(line).map_err(|_| at_line("not UTF-8".to_owned()))?;
        let trimmed = text.trim();
        if trimmed.is_empty() || (n == 1 && trimmed.starts_with("sl")) {
            continue;
        }
        each(trimmed).map_err(at_line)?;
    }
}

/// Whether a socket is LISTENing on `port` (IPv4 or IPv6): the application is up.
pub fn listening(port: u16) -> bool {
    listening_sockets(&[port]).is_ok_and(|found| !found.is_empty())
}

/// The LISTEN sockets on `ports`, from `/proc/net/tcp{,6}`.
pub fn listening_sockets(ports: &[u16]) -> Result<Vec<(u16, SocketAddr)>, CensusError> {
    let mut found = Vec::new();
    let mut line = Vec::new();
    for file in FILES {
        scan(Path::new(file), &mut line, |text| {
            let e = parse_line(text)?;
            if e.state == LISTEN && ports.contains(&e.local_port) {
                found.push((e.local_port, SocketAddr::new(e.local, e.local_port)));
            }
            Ok(())
        })?;
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

pub struct ProcCensus {
    spec: CensusSpec,
    files: Vec<PathBuf>,
    line: Vec<u8>,
    previous: Option<Vec<u64>>,
    current: Vec<u64>,
}

impl ProcCensus {
    pub fn new(spec: CensusSpec) -> ProcCensus {
        Self::with_files(spec, FILES.iter().map(PathBuf::from).collect())
    }

    /// Reads other files (captured fixtures in tests).
    pub fn with_files(spec: CensusSpec, files: Vec<PathBuf>) -> ProcCensus {
        ProcCensus {
            spec,
            files,
            line: Vec::new(),
            previous: None,
            current: Vec::new(),
        }
    }
}

impl Census for ProcCensus {
    fn count(&mut self) -> Result<Count, CensusError> {
        self.current.clear();
        let (spec, current) = (&self.spec, &mut self.current);
        for file in &self.files {
            scan(file, &mut self.line, |text| {
                // Most lines are other states or ports: decide on those before parsing the peer.
                let (local, remote, st) = fields(text)?;
                if state(st)? != ESTABLISHED {
                    return Ok(());
                }
                let (_, local_port) =
                    address(local).ok_or_else(|| format!("bad local address {local:?}"))?;
                if !spec.ports.contains(&local_port) {
                    return Ok(());
                }
                let (peer, _) =
                    address(remote).ok_or_else(|| format!("bad remote address {remote:?}"))?;
                if !spec.excluded(peer) {
                    current.push(key(local, remote));
                }
                Ok(())
            })?;
        }
        // The kernel resumes a read by position: a line read twice (sockets closed before the
        // seam while it read) is one connection, counted once. Seen in CI: 7 where 5 were open.
        self.current.sort_unstable();
        self.current.dedup();
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

    // Written in the kernel's format for a little-endian machine (see the module doc): drain ports
    // 8080 and 443; LISTEN, ESTABLISHED, TIME_WAIT, CLOSE_WAIT, FIN_WAIT2 and SYN_RECV lines; a local
    // client of 8080 (its own local port is ephemeral), an outgoing connection *to* a remote 8080, an
    // accepted-but-not-yet-accept()ed socket (inode 0); in tcp6 v4-mapped peers of a dual-stack
    // listener, global, link-local and loopback IPv6 peers.
    const TCP: &str = include_str!("../../tests/fixtures/proc_net_tcp");
    const TCP6: &str = include_str!("../../tests/fixtures/proc_net_tcp6");

    fn census(
        ports: &[u16],
        exclude: &[&str],
        tcp: &str,
        tcp6: &str,
    ) -> (tempfile::TempDir, ProcCensus) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), tcp).unwrap();
        std::fs::write(dir.path().join("tcp6"), tcp6).unwrap();
        let spec = CensusSpec {
            ports: ports.to_vec(),
            exclude_peers: exclude.iter().map(|c| c.parse().unwrap()).collect(),
        };
        let files = vec![dir.path().join("tcp"), dir.path().join("tcp6")];
        (dir, ProcCensus::with_files(spec, files))
    }

    fn established(ports: &[u16], exclude: &[&str]) -> usize {
        let (_d, mut c) = census(ports, exclude, TCP, TCP6);
        c.count().unwrap().established
    }

    #[test]
    fn a_line_read_twice_is_counted_once() {
        let lines: Vec<&str> = TCP.lines().collect();
        // The header, then every line twice: what a read resumed past a seam can return.
        let mut twice = String::from(lines[0]);
        twice.push('\n');
        for l in &lines[1..] {
            twice.push_str(&format!("{l}\n{l}\n"));
        }
        let (_d, mut c) = census(&[8080, 443], &[], TCP, "");
        let once = c.count().unwrap().established;
        let (_d, mut c) = census(&[8080, 443], &[], &twice, "");
        assert_eq!(c.count().unwrap().established, once);
    }

    #[test]
    fn counts_established_on_the_drain_ports_in_both_families() {
        // tcp: lines 3, 4, 5, 11, 14; tcp6: lines 1, 2, 3, 4, 6.
        assert_eq!(established(&[8080, 443], &[]), 10);
        // 8080 only: tcp 3, 4, 11, 14; tcp6 1, 2, 3, 6.
        assert_eq!(established(&[8080], &[]), 8);
        assert_eq!(established(&[22], &[]), 1);
        assert_eq!(established(&[9999], &[]), 0);
    }

    #[test]
    fn excluded_peers_do_not_count_also_when_v4_mapped() {
        // Loopback in both families: tcp 11, tcp6 2 (::ffff:127.0.0.1) and 6 (::1).
        assert_eq!(established(&[8080, 443], &["127.0.0.0/8", "::1/128"]), 7);
        // The LB's IPv4 range also covers its v4-mapped peer in tcp6 (line 1).
        assert_eq!(established(&[8080, 443], &["100.125.0.0/16"]), 7);
        // An IPv6 range: tcp6 line 3 only.
        assert_eq!(established(&[8080, 443], &["2001:db8::/32"]), 9);
        assert_eq!(established(&[8080, 443], &["0.0.0.0/0", "::/0"]), 0);
    }

    #[test]
    fn parsed_fields_match_the_kernel_encoding() {
        let line = TCP6.lines().nth(2).unwrap(); // slot 1
        let e = parse_line(line).unwrap();
        assert_eq!(e.local.to_string(), "::ffff:10.0.0.5");
        assert_eq!(e.peer.to_string(), "::ffff:100.125.2.20");
        assert_eq!((e.local_port, e.state), (8080, ESTABLISHED));
        let e = parse_line(TCP6.lines().nth(5).unwrap()).unwrap(); // slot 4
        assert_eq!(
            (e.local.to_string(), e.local_port),
            ("2001:db8::5".to_owned(), 443)
        );
        assert_eq!(e.peer.to_string(), "fe80::1");
        let e = parse_line(TCP.lines().nth(6).unwrap()).unwrap(); // slot 5
        assert_eq!(e.peer.to_string(), "203.0.113.7");
    }

    #[test]
    fn arrivals_are_the_connections_not_seen_before() {
        let (d, mut c) = census(&[8080, 443], &[], TCP, TCP6);
        assert_eq!(
            c.count().unwrap().arrived,
            0,
            "the first census has no arrivals"
        );
        // One connection arrives, one leaves ESTABLISHED (line 3 goes to CLOSE_WAIT).
        let more = format!(
            "{TCP}  15: 0500000A:1F90 0800000A:D436 01 00000000:00000000 00:00000000 00000000     0        0 1007 1 0\n"
        );
        let more = more.replace(
            "   3: 0500000A:1F90 0A017D64:9C41 01",
            "   3: 0500000A:1F90 0A017D64:9C41 08",
        );
        std::fs::write(d.path().join("tcp"), more).unwrap();
        assert_eq!(
            c.count().unwrap(),
            Count {
                established: 10,
                arrived: 1
            }
        );
        assert_eq!(c.count().unwrap().arrived, 0, "nothing new since");
    }

    fn error(tcp: &str) -> String {
        let (_d, mut c) = census(&[8080], &[], tcp, "");
        c.count().unwrap_err().to_string()
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let err = error("  sl  local\n   0: 0100007F:1F90 garbage 01\n");
        assert!(
            err.contains("tcp: line 2: bad remote address \"garbage\""),
            "{err}"
        );
        let err = error("  sl  local\n\n   0: 0100007F:1F90\n");
        assert!(err.contains("line 3: no remote address"), "{err}");
        let err = error("   0: 0100007F:1F90 0100007F:AFC8 1\n");
        assert!(err.contains("line 1: bad state"), "{err}");
        let err =
            error("   0: 0100007F:1F90 0100007F:AFC8 01 x\n   1: 0100007F:+F90 0100007F:AFC8 01\n");
        assert!(err.contains("line 2: bad local address"), "{err}");
        let err = error("   0: 0100007F:1F90 0100007F:AFC8 01 x\n\u{ff}\n");
        assert!(err.contains("line 2"), "{err}");
        let bytes = b"   0: 0100007F:1F90 0100007F:AFC8 01\n\xff\xfe\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), bytes).unwrap();
        let spec = CensusSpec {
            ports: vec![8080],
            exclude_peers: vec![],
        };
        let err = ProcCensus::with_files(spec, vec![dir.path().join("tcp")])
            .count()
            .unwrap_err();
        assert!(err.to_string().ends_with("tcp: line 2: not UTF-8"), "{err}");
    }

    #[test]
    fn a_missing_tcp6_is_a_kernel_without_ipv6_but_a_missing_tcp_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tcp"), TCP).unwrap();
        let spec = CensusSpec {
            ports: vec![8080],
            exclude_peers: vec![],
        };
        let files = vec![dir.path().join("tcp"), dir.path().join("tcp6")];
        assert_eq!(
            ProcCensus::with_files(spec.clone(), files)
                .count()
                .unwrap()
                .established,
            4
        );
        let err = ProcCensus::with_files(spec, vec![dir.path().join("nope")])
            .count()
            .unwrap_err();
        assert!(matches!(err, CensusError::ProcRead { .. }), "{err}");
    }

    #[test]
    fn this_machines_files_parse() {
        // Whatever sockets exist now, every line of the real files is understood.
        let spec = CensusSpec {
            ports: vec![1],
            exclude_peers: vec![],
        };
        ProcCensus::new(spec).count().unwrap();
        listening_sockets(&[1]).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn the_line_parser_never_panics(line in "\\PC{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn hex_looking_lines_never_panic(a in "[0-9A-Fa-f:]{0,40}", b in "[0-9A-F:x]{0,40}", st in "[0-9A-F+-]{0,3}") {
            let _ = parse_line(&format!("0: {a} {b} {st} 0 0 0"));
        }

        #[test]
        fn the_census_never_panics_on_a_file_of_junk(text in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("tcp"), text.join("\n")).unwrap();
            let spec = CensusSpec { ports: vec![8080], exclude_peers: vec![] };
            let _ = ProcCensus::with_files(spec, vec![dir.path().join("tcp")]).count();
        }
    }
}
