//! The netlink `sock_diag` census.
//!
//! A dump asks only for ESTABLISHED sockets and carries an `INET_DIAG_REQ_BYTECODE` filter on the local
//! port, so the kernel sends only the sockets we count. The reply is walked in place in one reused
//! buffer: a census costs no allocation per socket. What it keeps of the sockets it counted is their
//! cookies, in a compressed set ([`super::cookies`]: tens of KiB at 100k sockets), for the destroy
//! count-down and to tell new connections from known ones.
//!
//! IPv4 and IPv6 TCP sockets live in one kernel hash, and every dump walks all of it whatever family it
//! asks for, so two per-family dumps cost two walks. The legacy `TCPDIAG_GETSOCK` request (still served
//! by `inet_diag` for `ss` of old) dumps both families in one walk, and is what [`DumpMode::Combined`]
//! uses. Where a kernel refuses it, [`DumpMode::PerFamily`] sends the `SOCK_DIAG_BY_FAMILY` dumps and
//! skips the IPv6 one unless an IPv6 or dual-stack socket listens on a drain port (a dual-stack `[::]`
//! listener receives IPv4 clients as v4-mapped IPv6 sockets). That check is redone at every census: a
//! LISTEN-only dump walks the small listening hash, not the established one, so it costs microseconds
//! and a listener that appears later is never missed.
//!
//! **Rechecks.** While a census counted at most [`RECHECK_MAX`] sockets, it keeps each one's identity
//! (`inet_diag_sockid`: addresses, ports, interface, cookie), and [`Census::recheck`] asks the kernel
//! about them one by one: a `SOCK_DIAG_BY_FAMILY` request without `NLM_F_DUMP` is a lookup in the
//! established hash, not a walk of it, and the cookie makes it exact (a new socket on the same addresses
//! is `ESTALE`, a freed one `ENOENT`, a TIME_WAIT stand-in not ESTABLISHED). That is how the drain sees
//! a connection leave ESTABLISHED without its socket being freed (half-closed, CLOSE_WAIT until the
//! application closes it, FIN_WAIT2 until the peer does), which no destroy notification says, well
//! before the next census. A recheck only needs to know whether any is left: it stops at the first
//! socket still ESTABLISHED (looking up 1, then 2, 4, ... at a time) and forgets those found gone, which
//! are never looked up again. So while connections are open a recheck costs one lookup or a few, and
//! over a whole drain each socket is found gone once: the cost of rechecking often is about one lookup
//! per recheck plus one per connection. One recheck does at most [`RECHECK_WORK`] lookups, so finding
//! a wave of 20,000 gone is spread over a few rechecks rather than stalling the runtime's thread.
//!
//! Written against the raw structures rather than through `netlink-packet-sock-diag`: decoding each
//! message into owned values costs about 0.45 µs per socket, which at 100k sockets is a quarter of the
//! census; the layout used here is the stable kernel ABI (`linux/inet_diag.h`, `linux/netlink.h`).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::cookies::{CookieSet, Horizon};
use super::{Backend, Census, CensusError, CensusSpec, Count, RECHECK_WORK, v4, v6};

pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The legacy inet_diag request: `struct inet_diag_req`, both families in one dump.
pub(crate) const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;
pub(crate) const TCP_ESTABLISHED: u8 = 1;
pub(crate) const TCP_LISTEN: u8 = 10;
/// `struct inet_diag_msg`: family, state, timer, retrans, the 48-byte socket id, then 5 u32.
pub(crate) const DIAG_MSG_LEN: usize = 72;
/// The kernel fills a dump reply up to 32 KiB; the rest is headroom so a reply is never truncated.
const RECV_BUF: usize = 256 * 1024;
/// A census that counts at most this many sockets keeps their identities for [`Census::recheck`]:
/// 49 bytes each, 4.7 MiB at 100k sockets, 12.3 MiB at this limit, kept (not allocated again) from one
/// census to the next, and only by the drain's census ([`super::open_with_destroy`], from the stop
/// on); one-shot counts ([`super::open`]: `connections`, `status`, `check`) keep none. At 100k
/// connections a wave of closes leaves tens of thousands in CLOSE_WAIT or half-closed, which no destroy
/// notification reports: without their identities only the next census (a second or two away at
/// that size, see [`crate::drain::COST_RATIO`]) sees the last of them leave.
pub const RECHECK_MAX: usize = 1 << 18;
/// At most this many lookups in one datagram: their answers (one small datagram each) fit the
/// default receive buffer many times over, so none is dropped before it is read.
const RECHECK_BATCH: usize = 32;
/// `struct inet_diag_sockid`, as the kernel reports a socket and as a lookup names one.
const SOCKID_LEN: usize = 48;
/// Where the sockid starts in an `inet_diag_msg` (after family, state, timer, retrans).
const SOCKID_AT: usize = 4;

fn truncated(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("truncated {what}"))
}

fn ne_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A `NETLINK_SOCK_DIAG` socket.
pub(crate) struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl AsRawFd for DiagSocket {
    fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

impl DiagSocket {
    pub(crate) fn open() -> io::Result<DiagSocket> {
        // SAFETY: plain socket(2); the fd is owned from here on.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        Ok(DiagSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    pub(crate) fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl with the family set is the kernel's address; msg is valid.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::sendto(
                self.fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// One datagram. MSG_TRUNC makes the kernel report its real length, so a reply larger than the
    /// buffer is an error instead of silently cut messages.
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, 0)
    }

    fn recv_flags(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC | flags,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "netlink message of {n} bytes exceeds the {} byte buffer",
                            buf.len()
                        ),
                    ));
                }
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Sends a dump request and calls `each` with every `inet_diag_msg` of the reply. Each dump gets a
    /// new sequence number and messages of other numbers (the rest of an earlier, failed dump) are
    /// skipped, so one bad census does not poison the next.
    fn dump(
        &mut self,
        request: &mut [u8],
        buf: &mut [u8],
        each: &mut dyn FnMut(&[u8]),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        request[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        self.send(request)?;
        loop {
            let n = self.recv(buf)?;
            if n == 0 {
                return Err(truncated("dump: the socket ended before NLMSG_DONE"));
            }
            if walk(&buf[..n], Some(self.seq), each)? {
                return Ok(());
            }
        }
    }
}

/// Calls `each` with the kind, sequence number and payload of every netlink message in one datagram,
/// until it returns `Ok(true)`; whether it did. A message cut short is an error.
fn messages(
    buf: &[u8],
    mut each: impl FnMut(u16, u32, &[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        let Some(header) = buf.get(at..at + NLMSG_HDRLEN) else {
            return Err(truncated("netlink header"));
        };
        let len = ne_u32(header, 0) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(truncated("netlink message"));
        }
        if each(kind, ne_u32(header, 8), &buf[at + NLMSG_HDRLEN..at + len])? {
            return Ok(true);
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// The errno an NLMSG_ERROR (or a DONE) payload carries, 0 for none.
fn errno(kind: u16, payload: &[u8]) -> io::Result<i32> {
    match payload.get(..4) {
        Some(b) => Ok(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_neg()),
        None if kind == NLMSG_DONE => Ok(0),
        None => Err(truncated("netlink error")),
    }
}

/// Walks the netlink messages of one datagram, calling `each` with every `inet_diag_msg` (only those of
/// sequence `seq` when given). `Ok(true)` at NLMSG_DONE; NLMSG_ERROR (or a DONE carrying an error) is
/// the kernel's errno.
pub(crate) fn walk(buf: &[u8], seq: Option<u32>, each: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
    messages(buf, |kind, msg_seq, payload| {
        if seq.is_some_and(|s| s != msg_seq) {
            return Ok(false);
        }
        match kind {
            NLMSG_DONE | NLMSG_ERROR => match errno(kind, payload)? {
                0 => Ok(kind == NLMSG_DONE),
                e => Err(io::Error::from_raw_os_error(e)),
            },
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match payload.get(..DIAG_MSG_LEN) {
                Some(msg) => {
                    each(msg);
                    Ok(false)
                }
                None => Err(truncated("inet_diag_msg")),
            },
            _ => Ok(false),
        }
    })
}

/// The bytecode accepting a local port in `ports`: for each port `sport >= p && sport <= p`, OR-ed with
/// jumps the kernel's bytecode audit accepts (every jump lands on an instruction boundary or just past
/// the end, which rejects).
pub fn port_filter(ports: &[u16]) -> Vec<u8> {
    let n = ports.len();
    if n == 0 {
        return Vec::new();
    }
    let total = 20 * (n - 1) + 16;
    let mut bc = Vec::with_capacity(total);
    let op = |bc: &mut Vec<u8>, code: u8, yes: u8, no: u16| {
        bc.push(code);
        bc.push(yes);
        bc.extend_from_slice(&no.to_ne_bytes());
    };
    for (i, &port) in ports.iter().enumerate() {
        let start = 20 * i;
        let last = i + 1 == n;
        // On failure: the next port's block, or past the end (reject) for the last one.
        let fail = if last { total + 4 } else { start + 20 };
        op(&mut bc, INET_DIAG_BC_S_GE, 8, (fail - start) as u16);
        op(&mut bc, 0, 0, port);
        op(&mut bc, INET_DIAG_BC_S_LE, 8, (fail - start - 8) as u16);
        op(&mut bc, 0, 0, port);
        if !last {
            // Matched: jump to the end (accept).
            op(&mut bc, INET_DIAG_BC_JMP, 4, (total - (start + 16)) as u16);
        }
    }
    debug_assert_eq!(bc.len(), total);
    bc
}

fn header(msg: &mut Vec<u8>, kind: u16) {
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // seq, set per dump
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
}

fn finish(mut msg: Vec<u8>, ports: &[u16]) -> Vec<u8> {
    let bc = port_filter(ports);
    if !bc.is_empty() {
        msg.extend_from_slice(&((4 + bc.len()) as u16).to_ne_bytes());
        msg.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        msg.extend_from_slice(&bc);
    }
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// A `SOCK_DIAG_BY_FAMILY` dump request (`struct inet_diag_req_v2`) for one family, filtered to `ports`.
pub(crate) fn request(family: u8, states: u32, ports: &[u16]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128);
    header(&mut msg, SOCK_DIAG_BY_FAMILY);
    msg.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: no exact match
    finish(msg, ports)
}

/// A `TCPDIAG_GETSOCK` dump request (`struct inet_diag_req`): TCP of both families in one walk.
pub(crate) fn combined_request(states: u32, ports: &[u16]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(128);
    header(&mut msg, TCPDIAG_GETSOCK);
    msg.extend_from_slice(&[0, 0, 0, 0]); // family (ignored: both), src_len, dst_len, ext
    msg.extend_from_slice(&[0u8; 48]); // inet_diag_sockid
    msg.extend_from_slice(&states.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // idiag_dbs
    finish(msg, ports)
}

/// Lookups of single sockets (`SOCK_DIAG_BY_FAMILY` without `NLM_F_DUMP`), one message each, numbered
/// from `seq` on.
pub(crate) fn lookup_requests(sockets: &[Tracked], seq: u32) -> Vec<u8> {
    const LEN: usize = NLMSG_HDRLEN + 8 + SOCKID_LEN;
    let mut msg = Vec::with_capacity(sockets.len() * LEN);
    for (i, t) in sockets.iter().enumerate() {
        msg.extend_from_slice(&(LEN as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&seq.wrapping_add(i as u32).to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[t.family, libc::IPPROTO_TCP as u8, 0, 0]);
        msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // states: a lookup ignores them
        msg.extend_from_slice(&t.id);
    }
    msg
}

/// A socket a census counted, as a lookup names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tracked {
    family: u8,
    id: [u8; SOCKID_LEN],
}

impl Tracked {
    fn of(msg: &[u8]) -> Tracked {
        let mut id = [0u8; SOCKID_LEN];
        id.copy_from_slice(&msg[SOCKID_AT..SOCKID_AT + SOCKID_LEN]);
        Tracked { family: msg[0], id }
    }
}

/// The answers to lookups numbered `seq..seq + n` in one datagram: calls `answer(index, established)`
/// for each (a socket freed, or replaced by another on the same addresses, is an answer too: not
/// established). Other numbers are skipped (the rest of an earlier batch or dump).
fn lookup_answers(
    buf: &[u8],
    seq: u32,
    n: usize,
    answer: &mut dyn FnMut(usize, bool),
) -> io::Result<()> {
    messages(buf, |kind, msg_seq, payload| {
        let index = msg_seq.wrapping_sub(seq) as usize;
        if index >= n {
            return Ok(false);
        }
        match kind {
            SOCK_DIAG_BY_FAMILY => match payload.get(..DIAG_MSG_LEN) {
                Some(msg) => answer(index, msg[1] == TCP_ESTABLISHED),
                None => return Err(truncated("inet_diag_msg")),
            },
            NLMSG_ERROR => match errno(kind, payload)? {
                libc::ENOENT | libc::ESTALE => answer(index, false),
                e => return Err(io::Error::from_raw_os_error(e)),
            },
            _ => {}
        }
        Ok(false)
    })?;
    Ok(())
}

/// The fields of one `inet_diag_msg` the census needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSock {
    pub family: u8,
    pub state: u8,
    pub local_port: u16,
    pub local: std::net::IpAddr,
    pub peer: std::net::IpAddr,
    pub cookie: u64,
}

/// Reads a message of at least [`DIAG_MSG_LEN`] bytes (the walker guarantees it).
pub(crate) fn parse(msg: &[u8]) -> DiagSock {
    let family = msg[0];
    let local_port = u16::from_be_bytes([msg[4], msg[5]]);
    let addr = |at: usize| {
        if i32::from(family) == libc::AF_INET {
            v4([msg[at], msg[at + 1], msg[at + 2], msg[at + 3]])
        } else {
            let mut b = [0u8; 16];
            b.copy_from_slice(&msg[at..at + 16]);
            v6(b)
        }
    };
    let lo = u64::from(ne_u32(msg, 44));
    let hi = u64::from(ne_u32(msg, 48));
    DiagSock {
        family,
        state: msg[1],
        local_port,
        local: addr(8),
        peer: addr(24),
        cookie: lo | (hi << 32),
    }
}

/// One datagram of a dump reply decoded whole: its sockets (of sequence `seq` when given) and whether
/// the dump ended in it. The census walks in place without collecting; this is the same walk as one pure
/// entry point, for tests and fuzzing of what the kernel (or anything posing as it) sends.
pub fn decode_datagram(buf: &[u8], seq: Option<u32>) -> io::Result<(Vec<DiagSock>, bool)> {
    let mut socks = Vec::new();
    let done = walk(buf, seq, &mut |msg| socks.push(parse(msg)))?;
    Ok((socks, done))
}

/// How the census asks the kernel; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpMode {
    /// One `TCPDIAG_GETSOCK` dump for both families.
    Combined,
    /// `SOCK_DIAG_BY_FAMILY` per family, IPv6 only when an IPv6/dual-stack listener is on a port.
    PerFamily,
}

pub struct NetlinkCensus {
    spec: CensusSpec,
    socket: DiagSocket,
    buf: Vec<u8>,
    combined: Vec<u8>,
    v4: Vec<u8>,
    v6: Vec<u8>,
    v6_listen: Vec<u8>,
    /// `None` until the first dump tried [`DumpMode::Combined`].
    mode: Option<DumpMode>,
    /// The cookies of the previous census, to tell arrivals (`None` before the first); the same set
    /// the horizon publishes.
    previous: Option<Arc<CookieSet>>,
    horizon: Horizon,
    /// Socket messages the kernel sent in the latest census, before the check in user space.
    kernel_messages: usize,
    /// The sockets the latest census counted that no recheck found gone yet, in the order to look
    /// them up (one found ESTABLISHED first); valid when `tracking`.
    tracked: Vec<Tracked>,
    /// The latest census counted at most `recheck_max` sockets, all in `tracked`.
    tracking: bool,
    /// [`RECHECK_MAX`] for the drain's census, 0 for a one-shot count, or less for a test.
    recheck_max: usize,
}

impl NetlinkCensus {
    pub fn new(spec: CensusSpec) -> Result<NetlinkCensus, CensusError> {
        let socket = DiagSocket::open().map_err(|source| CensusError::Netlink {
            what: "socket",
            source,
        })?;
        let established = 1 << TCP_ESTABLISHED;
        Ok(NetlinkCensus {
            combined: combined_request(established, &spec.ports),
            v4: request(libc::AF_INET as u8, established, &spec.ports),
            v6: request(libc::AF_INET6 as u8, established, &spec.ports),
            v6_listen: request(libc::AF_INET6 as u8, 1 << TCP_LISTEN, &spec.ports),
            spec,
            socket,
            buf: vec![0; RECV_BUF],
            mode: None,
            previous: None,
            horizon: Horizon::default(),
            kernel_messages: 0,
            tracked: Vec::new(),
            tracking: false,
            recheck_max: RECHECK_MAX,
        })
    }

    /// A census that always uses `mode` (to compare the two in a benchmark).
    pub fn with_mode(spec: CensusSpec, mode: DumpMode) -> Result<NetlinkCensus, CensusError> {
        let mut census = Self::new(spec)?;
        census.mode = Some(mode);
        Ok(census)
    }

    /// Keeps identities for rechecks only while a census counts at most `max` sockets: 0 for a
    /// one-shot count, which keeps none; less than [`RECHECK_MAX`] for a test of what happens beyond
    /// it without opening that many connections.
    pub fn with_recheck_max(mut self, max: usize) -> NetlinkCensus {
        self.recheck_max = max.min(RECHECK_MAX);
        self
    }

    /// How many socket messages the kernel sent in the latest census. The state and port checks are
    /// redone here (a kernel that ignored the filter must not inflate the count), which would hide a
    /// filter that filters nothing: this number shows it. With the filter working it equals the
    /// ESTABLISHED sockets on the drain ports, excluded peers included (those are dropped here).
    pub fn kernel_messages(&self) -> usize {
        self.kernel_messages
    }

    /// The mode in use, once the first census chose it.
    pub fn dump_mode(&self) -> Option<DumpMode> {
        self.mode
    }

    /// One throw-away census, to learn whether this process may use sock_diag at all. The next
    /// [`Census::count`] is still the first (its `arrived` is 0).
    pub fn probe(&mut self) -> Result<(), CensusError> {
        self.count()?;
        self.previous = None;
        Ok(())
    }

    /// Whether an IPv6 or dual-stack socket listens on a drain port (then IPv4 clients may appear as
    /// v4-mapped AF_INET6 sockets too). Cheap: the kernel walks only its listening hash.
    pub fn ipv6_listener(&mut self) -> Result<bool, CensusError> {
        let mut any = false;
        self.socket
            .dump(&mut self.v6_listen, &mut self.buf, &mut |_| any = true)
            .map_err(|source| CensusError::Netlink {
                what: "IPv6 listener dump",
                source,
            })?;
        Ok(any)
    }

    /// Counts every ESTABLISHED socket on the ports in both families, also IPv6 ones without a
    /// listener (a listener closed while its connections live on).
    pub fn count_all_families(&mut self) -> Result<Count, CensusError> {
        match self.mode {
            Some(DumpMode::PerFamily) => self.tally(&[Dump::V4, Dump::V6]),
            _ => self.count(),
        }
    }

    /// Looks up the last `n` tracked sockets (at most [`RECHECK_BATCH`]); `up[i]` says whether the
    /// `i`-th of them is still ESTABLISHED.
    fn look_up(&mut self, n: usize, up: &mut [bool]) -> io::Result<()> {
        let seq = self.socket.seq.wrapping_add(1);
        self.socket.seq = seq.wrapping_add(n as u32 - 1);
        let from = self.tracked.len() - n;
        self.socket
            .send(&lookup_requests(&self.tracked[from..], seq))?;
        // The kernel answers each lookup within the send: everything is queued by now, so nothing
        // here waits (an answer missing is an error, not a hang).
        let mut answered = [false; RECHECK_BATCH];
        let mut left = n;
        while left > 0 {
            let len = self.socket.recv_flags(&mut self.buf, libc::MSG_DONTWAIT)?;
            lookup_answers(&self.buf[..len], seq, n, &mut |i, established| {
                if !std::mem::replace(&mut answered[i], true) {
                    left -= 1;
                    up[i] = established;
                }
            })?;
        }
        Ok(())
    }

    /// One census: the dumps, counting each counted socket once (a dump resumed in a changing table
    /// can report one twice), and its cookies published for the destroy watch.
    fn tally(&mut self, dumps: &[Dump]) -> Result<Count, CensusError> {
        let (mut established, mut arrived, mut messages) = (0usize, 0usize, 0usize);
        let spec = &self.spec;
        let previous = self.previous.as_deref();
        let mut current = CookieSet::new();
        let tracked = &mut self.tracked;
        let recheck_max = self.recheck_max;
        tracked.clear();
        let mut each = |m: &[u8]| {
            messages += 1;
            let s = parse(m);
            if s.state == TCP_ESTABLISHED
                && spec.counts(s.local_port, s.peer)
                && current.insert(s.cookie)
            {
                established += 1;
                if established <= recheck_max {
                    tracked.push(Tracked::of(m));
                }
                if previous.is_some_and(|p| !p.contains(s.cookie)) {
                    arrived += 1;
                }
            }
        };
        // Before the first request: a socket destroyed from here on may be in this census' set.
        self.horizon.begin();
        for dump in dumps {
            let (request, what) = match dump {
                Dump::Combined => (&mut self.combined, "dump (both families)"),
                Dump::V4 => (&mut self.v4, "IPv4 dump"),
                Dump::V6 => (&mut self.v6, "IPv6 dump"),
            };
            if let Err(source) = self.socket.dump(request, &mut self.buf, &mut each) {
                self.horizon.abandon();
                self.tracking = false;
                return Err(CensusError::Netlink { what, source });
            }
        }
        self.kernel_messages = messages;
        self.tracking = established <= recheck_max;
        if self.tracking {
            // Looked up from the end: the first counted first.
            self.tracked.reverse();
        }
        let current = Arc::new(current);
        self.horizon.publish(current.clone());
        self.previous = Some(current);
        Ok(Count {
            established,
            arrived,
        })
    }
}

#[derive(Clone, Copy)]
enum Dump {
    Combined,
    V4,
    V6,
}

impl Census for NetlinkCensus {
    fn count(&mut self) -> Result<Count, CensusError> {
        match self.mode {
            Some(DumpMode::Combined) => self.tally(&[Dump::Combined]),
            Some(DumpMode::PerFamily) => {
                if self.ipv6_listener()? {
                    self.tally(&[Dump::V4, Dump::V6])
                } else {
                    self.tally(&[Dump::V4])
                }
            }
            None => match self.tally(&[Dump::Combined]) {
                Ok(count) => {
                    self.mode = Some(DumpMode::Combined);
                    Ok(count)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "combined sock_diag dump refused; dumping per family");
                    self.mode = Some(DumpMode::PerFamily);
                    self.count()
                }
            },
        }
    }

    fn backend(&self) -> Backend {
        Backend::Netlink
    }

    fn horizon(&self) -> Option<Horizon> {
        Some(self.horizon.clone())
    }

    fn recheck(&mut self) -> Option<Result<usize, CensusError>> {
        if !self.tracking {
            return None;
        }
        // `tracked` is looked up from its end, where one found ESTABLISHED last time stays, so
        // forgetting those found gone is a truncation, never a move of the rest.
        let mut size = 1;
        let mut work = RECHECK_WORK;
        while !self.tracked.is_empty() && work > 0 {
            let n = size.min(self.tracked.len()).min(work);
            work -= n;
            let mut up = [false; RECHECK_BATCH];
            if let Err(source) = self.look_up(n, &mut up) {
                return Some(Err(CensusError::Netlink {
                    what: "recheck of counted sockets",
                    source,
                }));
            }
            let from = self.tracked.len() - n;
            let mut keep = from;
            for (i, &up) in up[..n].iter().enumerate() {
                if up {
                    self.tracked.swap(keep, from + i);
                    keep += 1;
                }
            }
            let any = keep > from;
            self.tracked.truncate(keep);
            if any {
                break;
            }
            size = (size * 2).min(RECHECK_BATCH);
        }
        Some(Ok(self.tracked.len()))
    }
}

/// The LISTEN sockets on `ports`, both families, from one dump of the listening hash.
pub fn listening(ports: &[u16]) -> Result<Vec<(u16, SocketAddr)>, CensusError> {
    let mut socket = DiagSocket::open().map_err(|source| CensusError::Netlink {
        what: "socket",
        source,
    })?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut found = Vec::new();
    let mut each = |m: &[u8]| {
        let s = parse(m);
        if s.state == TCP_LISTEN && ports.contains(&s.local_port) {
            found.push((s.local_port, SocketAddr::new(s.local, s.local_port)));
        }
    };
    let states = 1 << TCP_LISTEN;
    let mut combined = combined_request(states, ports);
    if socket.dump(&mut combined, &mut buf, &mut each).is_err() {
        for family in [libc::AF_INET, libc::AF_INET6] {
            let mut req = request(family as u8, states, ports);
            socket
                .dump(&mut req, &mut buf, &mut each)
                .map_err(|source| CensusError::Netlink {
                    what: "listener dump",
                    source,
                })?;
        }
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(bc: &[u8]) -> Vec<(u8, u8, u16)> {
        bc.chunks(4)
            .map(|c| (c[0], c[1], u16::from_ne_bytes([c[2], c[3]])))
            .collect()
    }

    #[test]
    fn one_port_is_a_range_of_one() {
        assert_eq!(
            ops(&port_filter(&[8080])),
            vec![(2, 8, 20), (0, 0, 8080), (3, 8, 12), (0, 0, 8080)]
        );
        assert!(port_filter(&[]).is_empty());
    }

    #[test]
    fn several_ports_are_or_ed_with_jumps_to_the_end() {
        let bc = port_filter(&[80, 443, 8080]);
        assert_eq!(bc.len(), 56);
        assert_eq!(
            ops(&bc),
            vec![
                (2, 8, 20),
                (0, 0, 80),
                (3, 8, 12),
                (0, 0, 80),
                (1, 4, 40), // matched 80: jump from 16 to 56, the end
                (2, 8, 20),
                (0, 0, 443),
                (3, 8, 12),
                (0, 0, 443),
                (1, 4, 20),
                (2, 8, 20), // last: failing jumps to 60 = end + 4, reject
                (0, 0, 8080),
                (3, 8, 12),
                (0, 0, 8080),
            ]
        );
    }

    /// Runs the bytecode the way the kernel's `inet_diag_bc_run` does, for the ops we emit.
    fn run(bc: &[u8], sport: u16) -> bool {
        let mut at = 0i64;
        let len = bc.len() as i64;
        while at < len {
            let i = at as usize;
            let (code, yes, no) = (bc[i], bc[i + 1], u16::from_ne_bytes([bc[i + 2], bc[i + 3]]));
            let arg = u16::from_ne_bytes([bc[i + 6], bc[i + 7]]);
            let ok = match code {
                INET_DIAG_BC_S_GE => sport >= arg,
                INET_DIAG_BC_S_LE => sport <= arg,
                INET_DIAG_BC_JMP => false,
                _ => unreachable!(),
            };
            at += if ok { i64::from(yes) } else { i64::from(no) };
        }
        at == len
    }

    #[test]
    fn the_filter_accepts_exactly_the_ports() {
        for ports in [&[8080][..], &[80, 443], &[1, 65535, 8080, 8081]] {
            let bc = port_filter(ports);
            for p in [
                0, 1, 79, 80, 81, 442, 443, 444, 8079, 8080, 8081, 8082, 65534, 65535,
            ] {
                assert_eq!(
                    run(&bc, p),
                    ports.contains(&p),
                    "ports {ports:?}, sport {p}"
                );
            }
        }
    }

    #[test]
    fn requests_have_the_kernel_layout() {
        let r = request(libc::AF_INET6 as u8, 1 << TCP_ESTABLISHED, &[8080]);
        // nlmsghdr 16 + inet_diag_req_v2 56 + nlattr 4 + bytecode 16
        assert_eq!(r.len(), 92);
        assert_eq!(ne_u32(&r, 0), 92);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(&r[16..20], &[libc::AF_INET6 as u8, 6, 0, 0]);
        assert_eq!(ne_u32(&r, 20), 2);
        assert_eq!(u16::from_ne_bytes([r[72], r[73]]), 20);
        assert_eq!(u16::from_ne_bytes([r[74], r[75]]), INET_DIAG_REQ_BYTECODE);
        let c = combined_request(1 << TCP_LISTEN, &[80, 443]);
        // nlmsghdr 16 + inet_diag_req 60 + nlattr 4 + bytecode 36
        assert_eq!(c.len(), 116);
        assert_eq!(u16::from_ne_bytes([c[4], c[5]]), TCPDIAG_GETSOCK);
        assert_eq!(ne_u32(&c, 16 + 52), 1 << TCP_LISTEN);
        assert_eq!(u16::from_ne_bytes([c[76], c[77]]), 40);
    }

    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag(port: u16, cookie: u64) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG_LEN + 8]; // + an attribute, as the kernel appends
        m[0] = libc::AF_INET as u8;
        m[1] = TCP_ESTABLISHED;
        m[4..6].copy_from_slice(&port.to_be_bytes());
        m[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        m[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        m
    }

    #[test]
    fn a_lookup_names_the_socket_as_the_kernel_reported_it() {
        let mut reported = diag(8080, 0x1122_3344_5566_7788);
        reported[0] = libc::AF_INET6 as u8;
        reported[8..24].copy_from_slice(&[7; 16]);
        let t = Tracked::of(&reported);
        let msg = lookup_requests(&[t, t], 41);
        assert_eq!(msg.len(), 2 * 72);
        let one = &msg[..72];
        assert_eq!(ne_u32(one, 0), 72);
        assert_eq!(u16::from_ne_bytes([one[4], one[5]]), SOCK_DIAG_BY_FAMILY);
        assert_eq!(
            u16::from_ne_bytes([one[6], one[7]]),
            NLM_F_REQUEST,
            "a lookup, not a dump"
        );
        assert_eq!((ne_u32(one, 8), ne_u32(&msg[72..], 8)), (41, 42));
        assert_eq!(
            &one[16..18],
            &[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8]
        );
        assert_eq!(
            &one[24..72],
            &reported[4..52],
            "ports, addresses, interface and cookie, as reported"
        );
    }

    #[test]
    fn lookup_answers_are_matched_to_their_requests() {
        let mut closing = diag(1, 1);
        closing[1] = 8; // CLOSE_WAIT
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 10, &diag(1, 1));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 11, &closing));
        buf.extend(message(NLMSG_ERROR, 12, &(-libc::ENOENT).to_ne_bytes()));
        buf.extend(message(NLMSG_ERROR, 13, &(-libc::ESTALE).to_ne_bytes()));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 9, &diag(1, 1))); // an earlier batch
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 14, &diag(1, 1))); // beyond this one
        let mut seen = Vec::new();
        lookup_answers(&buf, 10, 4, &mut |i, up| seen.push((i, up))).unwrap();
        assert_eq!(seen, vec![(0, true), (1, false), (2, false), (3, false)]);

        let other = message(NLMSG_ERROR, 10, &(-libc::EPERM).to_ne_bytes());
        let err = lookup_answers(&other, 10, 1, &mut |_, _| {}).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EPERM),
            "any other error fails the recheck"
        );
        let short = message(SOCK_DIAG_BY_FAMILY, 10, &[0; 8]);
        assert!(lookup_answers(&short, 10, 1, &mut |_, _| {}).is_err());
    }

    #[test]
    fn the_walker_keeps_its_sequence_and_stops_at_done() {
        let mut buf = message(TCPDIAG_GETSOCK, 6, &diag(1, 1)); // left over from an earlier dump
        buf.extend(message(TCPDIAG_GETSOCK, 7, &diag(2, 2)));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 7, &diag(3, 3)));
        let mut seen = Vec::new();
        assert!(!walk(&buf, Some(7), &mut |m| seen.push(parse(m).local_port)).unwrap());
        buf.extend(message(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        buf.extend(message(TCPDIAG_GETSOCK, 7, &diag(4, 4))); // after DONE: not read
        assert!(walk(&buf, Some(7), &mut |m| seen.push(parse(m).local_port)).unwrap());
        assert_eq!(seen, vec![2, 3, 2, 3]);
    }

    #[test]
    fn the_walker_reports_kernel_errors_and_truncation() {
        let err = walk(
            &message(NLMSG_ERROR, 1, &(-libc::EPERM).to_ne_bytes()),
            Some(1),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        let err = walk(
            &message(NLMSG_DONE, 1, &(-libc::EINTR).to_ne_bytes()),
            Some(1),
            &mut |_| {},
        )
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINTR));
        let whole = message(TCPDIAG_GETSOCK, 1, &diag(2, 2));
        assert!(
            walk(&whole[..40], Some(1), &mut |_| {}).is_err(),
            "cut message"
        );
        assert!(
            walk(&whole[..10], Some(1), &mut |_| {}).is_err(),
            "cut header"
        );
        let short = message(TCPDIAG_GETSOCK, 1, &[0u8; 20]);
        assert!(
            walk(&short, Some(1), &mut |_| {}).is_err(),
            "short inet_diag_msg"
        );
    }

    #[test]
    fn a_message_is_parsed_from_the_kernel_layout() {
        let mut m = [0u8; DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = TCP_ESTABLISHED;
        m[4..6].copy_from_slice(&8080u16.to_be_bytes());
        m[8..12].copy_from_slice(&[10, 0, 0, 1]);
        m[24..28].copy_from_slice(&[10, 0, 0, 7]);
        m[44..48].copy_from_slice(&7u32.to_ne_bytes());
        m[48..52].copy_from_slice(&1u32.to_ne_bytes());
        let s = parse(&m);
        assert_eq!(
            (
                s.local_port,
                s.local.to_string(),
                s.peer.to_string(),
                s.cookie
            ),
            (
                8080,
                "10.0.0.1".to_owned(),
                "10.0.0.7".to_owned(),
                (1 << 32) | 7
            )
        );
        m[0] = libc::AF_INET6 as u8;
        m[24..40].copy_from_slice(
            &"::ffff:10.0.0.9"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        assert_eq!(parse(&m).peer.to_string(), "::ffff:10.0.0.9");
    }
}
