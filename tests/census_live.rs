//! The census against the real kernel: K connections opened here are counted exactly K times by both
//! the netlink and the /proc census, in both families (also v4-mapped through a dual-stack listener),
//! their arrivals are seen exactly (also when censuses run on different CPUs), their departures are
//! followed, and the socket-destroy watch reports exactly the counted sockets that were closed.
//! Loopback only; every wait has a deadline.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::wait_until;
use elb_drain::census::{
    self, Census, CensusError, CensusSpec, DestroyWatch, Destroyed, DumpMode, NetlinkCensus,
    ProcCensus,
};

struct Server {
    listener: TcpListener,
    accepted: Vec<TcpStream>,
}

impl Server {
    fn bind(addr: &str) -> Server {
        Server {
            listener: TcpListener::bind(addr).expect("bind"),
            accepted: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("local_addr")
    }

    /// `n` clients to `to` (this listener's address, or another form of it), all accepted here: in
    /// steps of 100, below the listen backlog (128), past which a connect waits for an accept.
    fn connect(&mut self, to: SocketAddr, n: usize) -> Vec<TcpStream> {
        let mut clients = Vec::with_capacity(n);
        while clients.len() < n {
            let step = (n - clients.len()).min(100);
            clients.extend((0..step).map(|_| TcpStream::connect(to).expect("connect")));
            for _ in 0..step {
                self.accepted
                    .push(self.listener.accept().expect("accept").0);
            }
        }
        clients
    }
}

fn spec(ports: &[u16], exclude: &[&str]) -> CensusSpec {
    CensusSpec {
        ports: ports.to_vec(),
        exclude_peers: exclude.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

/// Every way this crate can count: netlink in both dump modes, and /proc.
fn all(spec: &CensusSpec) -> Vec<(&'static str, Box<dyn Census>)> {
    vec![
        (
            "netlink combined",
            Box::new(NetlinkCensus::with_mode(spec.clone(), DumpMode::Combined).expect("netlink")),
        ),
        (
            "netlink per family",
            Box::new(NetlinkCensus::with_mode(spec.clone(), DumpMode::PerFamily).expect("netlink")),
        ),
        ("proc", Box::new(ProcCensus::new(spec.clone()))),
    ]
}

fn assert_counts(spec: &CensusSpec, want: usize, why: &str) {
    for (name, mut census) in all(spec) {
        assert_eq!(
            census.count().expect("census").established,
            want,
            "{why}: {name}"
        );
    }
}

#[test]
fn ipv4_connections_are_counted_exactly_by_every_backend() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let mut clients = server.connect(server.addr(), 7);
    assert_counts(&spec(&[port], &[]), 7, "7 accepted");
    assert_counts(&spec(&[port], &["127.0.0.0/8"]), 0, "peer excluded");
    assert_counts(&spec(&[port], &["10.0.0.0/8"]), 7, "other peers excluded");

    // Arrivals: three more between two censuses of the same census value, then none.
    let mut censuses = all(&spec(&[port], &[]));
    for (name, c) in censuses.iter_mut() {
        assert_eq!(c.count().unwrap().arrived, 0, "first census: {name}");
    }
    clients.extend(server.connect(server.addr(), 3));
    for (name, c) in censuses.iter_mut() {
        let count = c.count().unwrap();
        assert_eq!((count.established, count.arrived), (10, 3), "{name}");
        assert_eq!(c.count().unwrap().arrived, 0, "nothing new: {name}");
    }

    // Departures: close four (both ends); FIN exchange is asynchronous, so poll to a deadline.
    clients.truncate(6);
    server.accepted.truncate(6);
    for (name, mut c) in all(&spec(&[port], &[])) {
        assert!(
            wait_until(Duration::from_secs(5), || c
                .count()
                .is_ok_and(|n| n.established == 6)),
            "{name} settles at 6"
        );
    }
}

#[test]
fn several_ports_are_filtered_in_the_kernel() {
    let mut a = Server::bind("127.0.0.1:0");
    let mut b = Server::bind("127.0.0.1:0");
    let mut c = Server::bind("127.0.0.1:0");
    let _ca = a.connect(a.addr(), 2);
    let _cb = b.connect(b.addr(), 3);
    let _cc = c.connect(c.addr(), 4);
    let (pa, pb, pc) = (a.addr().port(), b.addr().port(), c.addr().port());
    assert_counts(&spec(&[pa, pb], &[]), 5, "two of three ports");
    assert_counts(&spec(&[pc, pa, pb], &[]), 9, "all three");
    assert_counts(&spec(&[pc], &[]), 4, "one");
}

/// The netlink census re-checks state and port in user space, so a count alone cannot tell a kernel
/// filter from none: the number of messages the kernel sent can. With many sockets on other ports and
/// in other states on the drain ports, the kernel must send exactly the counted ones.
#[test]
fn the_kernel_sends_only_the_counted_sockets() {
    let mut a = Server::bind("127.0.0.1:0");
    let mut b = Server::bind("127.0.0.1:0");
    let (pa, pb) = (a.addr().port(), b.addr().port());
    // Counted: ESTABLISHED with a drain port as the local port. Their client ends have it as the
    // peer port only: a filter on the wrong port field would send those too.
    let _ca = a.connect(a.addr(), 6);
    let _cb = b.connect(b.addr(), 4);
    let counted = 10;
    // Other ports: a busy neighbour, and the ports next to the drain ports where they are free (a
    // range check off by one would take them).
    let mut others = vec![Server::bind("127.0.0.1:0")];
    for p in [pa.wrapping_add(1), pa.wrapping_sub(1), pb.wrapping_add(1)] {
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            others.push(Server {
                listener: l,
                accepted: Vec::new(),
            });
        }
    }
    let mut _other_clients = Vec::new();
    for o in &mut others {
        let addr = o.addr();
        _other_clients.extend(o.connect(addr, 25));
    }
    // Other states on the drain port: CLOSE_WAIT (the client closed, the server has not), FIN_WAIT2
    // (the server closed, the client has not), TIME_WAIT (the server closed first, then the client).
    let close_wait = a.connect(a.addr(), 5);
    let _close_wait_servers = a.accepted.split_off(6);
    drop(close_wait);
    let _fin_wait_clients = a.connect(a.addr(), 5);
    a.accepted.truncate(6);
    let time_wait_clients = a.connect(a.addr(), 5);
    a.accepted.truncate(6);
    let in_state = |port: u16, state: u8| -> usize {
        let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        text.lines()
            .skip(1)
            .filter_map(|l| census::procfs::parse_line(l).ok())
            .filter(|e| e.local_port == port && e.state == state)
            .count()
    };
    const ESTABLISHED: u8 = 0x01;
    const FIN_WAIT2: u8 = 0x05;
    const CLOSE_WAIT: u8 = 0x08;
    const TIME_WAIT: u8 = 0x06;
    // FIN_WAIT2 needs the servers' FINs acknowledged; then the TIME_WAIT clients close.
    assert!(
        wait_until(Duration::from_secs(5), || in_state(pa, FIN_WAIT2) >= 10),
        "servers closed first: FIN_WAIT2 on the drain port"
    );
    drop(time_wait_clients);
    assert!(
        wait_until(Duration::from_secs(5), || in_state(pa, TIME_WAIT) >= 5
            && in_state(pa, CLOSE_WAIT) == 5),
        "TIME_WAIT and CLOSE_WAIT on the drain port"
    );
    let noise_on_port =
        in_state(pa, FIN_WAIT2) + in_state(pa, TIME_WAIT) + in_state(pa, CLOSE_WAIT);
    assert!(
        noise_on_port >= 15,
        "{noise_on_port} sockets in other states"
    );
    assert_eq!(
        in_state(pa, ESTABLISHED) + in_state(pb, ESTABLISHED),
        counted
    );

    for mode in [DumpMode::Combined, DumpMode::PerFamily] {
        let mut census = NetlinkCensus::with_mode(spec(&[pa, pb], &[]), mode).expect("netlink");
        assert_eq!(
            census.count().expect("census").established,
            counted,
            "{mode:?}"
        );
        assert_eq!(
            census.kernel_messages(),
            counted,
            "{mode:?}: the kernel sent sockets the census then had to drop"
        );
        // An excluded peer is dropped here, not in the kernel: it is sent, and not counted.
        let mut excluding =
            NetlinkCensus::with_mode(spec(&[pa, pb], &["127.0.0.0/8"]), mode).expect("netlink");
        assert_eq!(excluding.count().unwrap().established, 0, "{mode:?}");
        assert_eq!(excluding.kernel_messages(), counted, "{mode:?}");
    }
}

#[test]
fn ipv6_and_dual_stack_listeners_are_counted() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIP: no IPv6 loopback here");
        return;
    };
    let mut v6 = Server {
        listener,
        accepted: Vec::new(),
    };
    let _c6 = v6.connect(v6.addr(), 4);
    let p6 = v6.addr().port();
    assert_counts(&spec(&[p6], &[]), 4, "IPv6 clients");
    assert_counts(&spec(&[p6], &["::1/128"]), 0, "IPv6 peer excluded");

    let bindv6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    if bindv6only.trim() != "0" {
        eprintln!(
            "SKIP dual-stack part: net.ipv6.bindv6only = {}",
            bindv6only.trim()
        );
        return;
    }
    // A dual-stack listener on [::]: IPv4 clients arrive as v4-mapped AF_INET6 sockets.
    let mut dual = Server::bind("[::]:0");
    let port = dual.addr().port();
    let _c4 = dual.connect(SocketAddr::from(([127, 0, 0, 1], port)), 5);
    let _c6 = dual.connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), 2);
    assert_counts(&spec(&[port], &[]), 7, "v4-mapped and IPv6 clients");
    assert_counts(
        &spec(&[port], &["127.0.0.0/8"]),
        2,
        "v4-mapped excluded by an IPv4 CIDR",
    );
    assert_counts(
        &spec(&[port, p6], &["::1/128"]),
        5,
        "IPv6 loopback excluded",
    );
}

/// Waits until `census` counts `want` ESTABLISHED connections; else what it counted last (`None`:
/// every count failed). A count that fails is tried again.
fn wait_established(
    census: &mut dyn Census,
    want: usize,
    limit: Duration,
) -> Result<(), Option<usize>> {
    let mut seen = None;
    if wait_until(limit, || {
        seen = census.count().ok().map(|c| c.established);
        seen == Some(want)
    }) {
        Ok(())
    } else {
        Err(seen)
    }
}

/// Waits until a recheck finds every socket of the latest census gone (0).
fn rechecks_to_zero(census: &mut dyn Census, why: &str) {
    let mut seen = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            seen = Some(
                census
                    .recheck()
                    .expect("netlink rechecks")
                    .expect("recheck"),
            );
            seen == Some(0)
        }),
        "{why}: rechecked {seen:?}, want 0"
    );
}

/// A recheck says 0 only once every connection the census counted left ESTABLISHED, whichever way
/// it left: the client or the application half-closed it (the socket lives on, CLOSE_WAIT or
/// FIN_WAIT2), both closed it, either reset it.
#[test]
fn a_recheck_sees_a_connection_leave_established_whichever_way_it_leaves() {
    type Leave = fn(&mut Vec<TcpStream>, &mut Vec<TcpStream>);
    let ways: [(&str, Leave); 5] = [
        ("client half-closed", |c, _| {
            c[0].shutdown(std::net::Shutdown::Write).unwrap()
        }),
        ("application half-closed", |_, s| {
            s[0].shutdown(std::net::Shutdown::Write).unwrap()
        }),
        ("both closed", |c, s| {
            c.clear();
            s.clear();
        }),
        ("client reset", |c, _| common::reset(c.remove(0))),
        ("application reset", |_, s| common::reset(s.remove(0))),
    ];
    for (why, leave) in ways {
        let mut server = Server::bind("127.0.0.1:0");
        let port = server.addr().port();
        let mut clients = server.connect(server.addr(), 1);
        for mode in [DumpMode::Combined, DumpMode::PerFamily] {
            let mut census = NetlinkCensus::with_mode(spec(&[port], &[]), mode).expect("netlink");
            assert_eq!(census.count().unwrap().established, 1, "{why}");
            assert_eq!(census.recheck().unwrap().unwrap(), 1, "{why}: open");
            assert_eq!(census.recheck().unwrap().unwrap(), 1, "{why}: still open");
        }
        let mut census = NetlinkCensus::new(spec(&[port], &[])).expect("netlink");
        assert_eq!(census.count().unwrap().established, 1);
        leave(&mut clients, &mut server.accepted);
        rechecks_to_zero(&mut census, why);
        assert_eq!(
            census.count().unwrap().established,
            0,
            "{why}: the census agrees"
        );
    }
}

/// With many connections a recheck never says 0 while one is left, wherever it is in the census'
/// order; connections that arrived after the census are not among those it rechecks (the census
/// counts them).
#[test]
fn a_recheck_says_zero_only_when_the_last_counted_connection_left() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let clients = server.connect(server.addr(), 40);
    let mut census = NetlinkCensus::new(spec(&[port], &[])).expect("netlink");
    assert_eq!(census.count().unwrap().established, 40);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut open: Vec<usize> = (0..40).collect();
    rng.shuffle(&mut open);
    let last = open.pop().unwrap();
    for (n, &i) in open.iter().enumerate() {
        clients[i].shutdown(std::net::Shutdown::Write).unwrap();
        let left = 40 - n - 1;
        // Let the FIN land; whatever the recheck has seen, it must not be 0.
        for _ in 0..3 {
            let said = census.recheck().unwrap().unwrap();
            assert!((1..=40).contains(&said), "{left} open, recheck said {said}");
        }
    }
    let arrived = server.connect(server.addr(), 2);
    clients[last].shutdown(std::net::Shutdown::Write).unwrap();
    rechecks_to_zero(&mut census, "the last counted one left");
    assert_eq!(
        census.count().unwrap().established,
        2,
        "the arrivals are the census' to count"
    );
    assert_eq!(
        census.recheck().unwrap().unwrap(),
        2,
        "and the next rechecks follow them"
    );
    drop(arrived);
}

/// A census that counted more than it keeps identities for cannot recheck; one that counted fewer
/// again can; a one-shot count and /proc never can. (The limit is lowered here: [`RECHECK_MAX`] is
/// a quarter million.)
///
/// [`RECHECK_MAX`]: elb_drain::census::netlink::RECHECK_MAX
#[test]
fn rechecks_only_follow_a_census_of_few_connections() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let max = 100;
    let mut clients = server.connect(server.addr(), max + 1);
    let mut census = NetlinkCensus::new(spec(&[port], &[]))
        .expect("netlink")
        .with_recheck_max(max);
    assert_eq!(census.count().unwrap().established, max + 1);
    assert!(census.recheck().is_none(), "{} counted", max + 1);
    clients.pop();
    server.accepted.pop();
    assert_eq!(
        wait_established(&mut census, max, Duration::from_secs(5)),
        Ok(()),
        "one closed"
    );
    assert_eq!(census.recheck().unwrap().unwrap(), max, "at the limit");
    // A one-shot count (`connections`, `status`) keeps no ids at all.
    let mut one_shot = census::open(&spec(&[port], &[]));
    assert_eq!(one_shot.count().unwrap().established, max);
    assert!(
        one_shot.recheck().is_none(),
        "a one-shot count keeps no ids"
    );
    let mut proc = ProcCensus::new(spec(&[port], &[]));
    proc.count().unwrap();
    assert!(proc.recheck().is_none(), "/proc has no lookup");
}

/// A wave that leaves more sockets to find gone than one recheck looks up ([`RECHECK_WORK`]) is
/// followed over several rechecks, each doing its bounded share, none saying 0 early; the last
/// says 0 and the census agrees. (One found still open stops a recheck early: the test above.)
///
/// [`RECHECK_WORK`]: elb_drain::census::RECHECK_WORK
#[test]
fn a_wave_larger_than_one_recheck_is_followed_over_several() {
    let work = elb_drain::census::RECHECK_WORK;
    let n = 2 * work + work / 2;
    common::raise_nofile(2 * n as u64 + 1_000);
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    // In steps the listen backlog takes without dropping SYNs.
    let mut clients = Vec::new();
    while clients.len() < n {
        let k = (n - clients.len()).min(64);
        clients.extend(server.connect(server.addr(), k));
    }
    let mut census = NetlinkCensus::new(spec(&[port], &[])).expect("netlink");
    assert_eq!(census.count().unwrap().established, n);
    // The clients half-close; the application never closes (CLOSE_WAIT: no destroy event).
    for c in &clients {
        c.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // A second census sees them leave ESTABLISHED (the first one's rechecks must do the finding).
    let mut watch = NetlinkCensus::new(spec(&[port], &[])).expect("netlink");
    assert_eq!(
        wait_established(&mut watch, 0, Duration::from_secs(10)),
        Ok(()),
        "still ESTABLISHED"
    );
    let said: Vec<usize> = (0..3).map(|_| census.recheck().unwrap().unwrap()).collect();
    assert_eq!(
        said,
        [n - work, n - 2 * work, 0],
        "each recheck finds at most {work} gone and leaves the rest to the next"
    );
    assert_eq!(census.count().unwrap().established, 0, "the census agrees");
}

/// Rechecks of v4-mapped and IPv6 sockets (a dual-stack listener): each is looked up in its family.
#[test]
fn rechecks_follow_ipv6_and_v4_mapped_connections() {
    let bindv6only = std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").unwrap_or_default();
    let Ok(listener) = TcpListener::bind("[::]:0") else {
        eprintln!("SKIP: no IPv6 here");
        return;
    };
    if bindv6only.trim() != "0" || TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no dual-stack IPv6 loopback here");
        return;
    }
    let mut dual = Server {
        listener,
        accepted: Vec::new(),
    };
    let port = dual.addr().port();
    let c4 = dual.connect(SocketAddr::from(([127, 0, 0, 1], port)), 2);
    let c6 = dual.connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)), 2);
    let mut census = NetlinkCensus::new(spec(&[port], &[])).expect("netlink");
    assert_eq!(census.count().unwrap().established, 4);
    assert_eq!(census.recheck().unwrap().unwrap(), 4, "v4-mapped and IPv6");
    c4[0].shutdown(std::net::Shutdown::Write).unwrap();
    c6[0].shutdown(std::net::Shutdown::Write).unwrap();
    c4[1].shutdown(std::net::Shutdown::Write).unwrap();
    assert_ne!(census.recheck().unwrap().unwrap(), 0, "an IPv6 one is open");
    c6[1].shutdown(std::net::Shutdown::Write).unwrap();
    rechecks_to_zero(&mut census, "all half-closed by the clients");
}

#[test]
fn listeners_are_listed_with_their_addresses() {
    let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let p4 = v4.local_addr().unwrap().port();
    let mut want = vec![(p4, v4.local_addr().unwrap())];
    let v6 = TcpListener::bind("[::1]:0").ok();
    if let Some(l) = &v6 {
        want.push((l.local_addr().unwrap().port(), l.local_addr().unwrap()));
    }
    let ports: Vec<u16> = want.iter().map(|w| w.0).collect();
    // A connection on the port is not a listener.
    let _c = TcpStream::connect(v4.local_addr().unwrap()).unwrap();
    let _a = v4.accept().unwrap();
    want.sort();
    assert_eq!(census::listening(&ports).unwrap(), want);
    assert_eq!(census::procfs::listening_sockets(&ports).unwrap(), want);
    assert!(census::procfs::listening(p4));
    drop(v4);
    assert!(census::listening(&[p4]).unwrap().is_empty());
}

fn pin_to(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t filled by CPU_SET, applied to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn unpin() {
    // SAFETY: as in pin_to, with every CPU this machine can have.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn arrivals_are_exact_when_censuses_run_on_different_cpus() {
    // The kernel hands out socket cookies in per-CPU batches, so a socket first dumped on one CPU can
    // get a smaller cookie than one dumped earlier on another: "cookie > previous maximum" would miss
    // it. Alternate the census between CPUs and check every arrival is seen.
    if !(pin_to(0) && pin_to(1)) {
        unpin();
        eprintln!("SKIP: fewer than two CPUs usable here");
        return;
    }
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let mut clients = server.connect(server.addr(), 2);
    let mut census = NetlinkCensus::new(spec(&[port], &[])).unwrap();
    pin_to(0);
    census.count().unwrap();
    let mut open = 2;
    for round in 0..8 {
        let fresh = 1 + round % 3;
        clients.extend(server.connect(server.addr(), fresh));
        open += fresh;
        pin_to((round + 1) % 2);
        let count = census.count().unwrap();
        assert_eq!(
            (count.established, count.arrived),
            (open, fresh),
            "round {round}"
        );
    }
    unpin();
}

#[test]
fn open_prefers_netlink_and_counts_the_same() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let _c = server.connect(server.addr(), 3);
    let mut census = census::open(&spec(&[port], &[]));
    assert_eq!(census.backend(), census::Backend::Netlink);
    assert_eq!(
        census.count().unwrap(),
        census::Count {
            established: 3,
            arrived: 0
        },
        "the probe is not the first census"
    );
    assert!(census.horizon().is_some());
}

/// Waits (bounded) until `watch` has reported `want` matching destroys in total.
async fn destroyed(watch: &mut DestroyWatch, want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < want {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Ok(c)) => seen += c.destroyed,
            Ok(Err(e)) => panic!("destroy watch: {e}"),
            Err(_) => break,
        }
    }
    seen
}

/// What is already queued for `watch`: how many matching destroys, and against which census
/// (the largest number seen; 0 without a horizon).
fn queued(watch: &mut DestroyWatch) -> (usize, u64) {
    let (mut n, mut census) = (0, 0);
    while let Some(c) = watch.try_next().expect("destroy watch") {
        n += c.destroyed;
        census = census.max(c.census);
    }
    (n, census)
}

fn subscribe_or_skip(spec: &CensusSpec) -> Option<DestroyWatch> {
    match DestroyWatch::subscribe(spec) {
        Ok(w) => Some(w),
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

#[tokio::test]
async fn destroy_notifications_report_exactly_the_counted_sockets_that_closed() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let spec = spec(&[port], &[]);
    let mut clients = server.connect(server.addr(), 5);
    // Subscribed before the base census, as the drain does; `all` sees every destroy on the port.
    let (Some(mut counted), Some(mut all)) = (subscribe_or_skip(&spec), subscribe_or_skip(&spec))
    else {
        return;
    };
    let mut census = NetlinkCensus::new(spec.clone()).unwrap();
    counted.follow(census.horizon().expect("netlink has a horizon"));
    assert_eq!(census.count().unwrap().established, 5);

    // Two arrive after the base census: their end is not part of the count-down.
    let late_clients = server.connect(server.addr(), 2);
    let late_accepted = server.accepted.split_off(5);
    // Close three counted ones and both late ones (both ends: the server side is then freed).
    clients.truncate(2);
    server.accepted.truncate(2);
    drop((late_clients, late_accepted));

    assert_eq!(
        destroyed(&mut all, 5).await,
        5,
        "every closed socket on the port"
    );
    // `all` has read all five, so the same notifications are queued for `counted` too.
    assert_eq!(queued(&mut counted), (3, 1), "only the counted ones");
    assert_eq!(queued(&mut counted), (0, 0));
    assert_eq!(census.count().unwrap().established, 2);
}

/// The socket's cookie (`SO_COOKIE`: the kernel numbers it now if nothing asked before).
fn cookie(s: &TcpStream) -> u64 {
    use std::os::fd::AsRawFd;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a u64 option into a u64 we own, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// A socket an earlier census counted, that left ESTABLISHED before the latest census (its client
/// half-closed and the application has not closed its end: CLOSE_WAIT), is not one the latest
/// census counted: when the application closes it and it is freed, the latest count must not go
/// down. The count-down by cookie batches took it off (its cookie is below others of its batch that
/// the latest census counted), so the count-down of a large drain reached zero early.
#[tokio::test]
async fn a_socket_that_left_established_before_the_latest_census_does_not_count_down_from_it() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let spec = spec(&[port], &[]);
    let mut clients = server.connect(server.addr(), 3);
    // Numbered here, in order, from this CPU's batch: the first is the smallest of its batch.
    let cookies: Vec<u64> = server.accepted.iter().map(cookie).collect();
    let first = (0..3).min_by_key(|&i| cookies[i]).unwrap();
    let (Some(mut counted), Some(mut all)) = (subscribe_or_skip(&spec), subscribe_or_skip(&spec))
    else {
        return;
    };
    let mut census = NetlinkCensus::new(spec.clone()).unwrap();
    let horizon = census.horizon().expect("netlink has a horizon");
    counted.follow(horizon.clone());
    assert_eq!(census.count().unwrap().established, 3);

    clients[first]
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    assert!(
        wait_until(Duration::from_secs(5), || census
            .count()
            .unwrap()
            .established
            == 2),
        "the half-closed connection left ESTABLISHED"
    );
    let latest = horizon.number();
    // The application closes its end: LAST_ACK, the client's ACK, freed.
    drop(server.accepted.remove(first));
    assert_eq!(destroyed(&mut all, 1).await, 1, "the socket was freed");
    assert_eq!(
        queued(&mut counted),
        (0, 0),
        "the latest census (number {latest}) did not count it"
    );

    // One it did count.
    drop(server.accepted.remove(0));
    drop(clients.remove(if first == 0 { 1 } else { 0 }));
    assert_eq!(destroyed(&mut all, 1).await, 1);
    assert_eq!(queued(&mut counted), (1, latest));
}

#[tokio::test]
async fn destroy_notifications_ignore_excluded_peers_and_other_ports() {
    let mut server = Server::bind("127.0.0.1:0");
    let mut other = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let (Some(mut excluded), Some(mut all)) = (
        subscribe_or_skip(&spec(&[port], &["127.0.0.0/8"])),
        subscribe_or_skip(&spec(&[port], &[])),
    ) else {
        return;
    };
    let c = server.connect(server.addr(), 2);
    let o = other.connect(other.addr(), 3);
    drop((c, o, other));
    server.accepted.clear();
    assert_eq!(destroyed(&mut all, 2).await, 2);
    assert_eq!(queued(&mut excluded).0, 0, "peer excluded");
    // The listener's own end (peer unspecified) is never a counted connection.
    drop(server);
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut late = 0;
    while Instant::now() < deadline {
        late += queued(&mut all).0;
        tokio::task::yield_now().await;
    }
    assert_eq!(
        late, 0,
        "the closed listener and the other port do not count"
    );
}

/// Runs `test` on a thread of its own in a network namespace of its own (see [`common::netns`]): the
/// destroy notifications it sees are of its own sockets only, not of the tests running beside it in
/// this process. Where no namespace can be made the test skips, saying so.
fn in_own_netns(test: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        if let Err(e) = common::netns::enter_own() {
            eprintln!("SKIP: no network namespace of its own: {e}");
            return;
        }
        test();
    })
    .join()
    .unwrap();
}

/// Reads `rx` until it has counted `n` destroys (each message within `limit`): how many messages that
/// took.
async fn messages_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Destroyed>,
    n: usize,
    limit: Duration,
) -> usize {
    let (mut seen, mut messages) = (0, 0);
    while seen < n {
        match tokio::time::timeout(limit, rx.recv()).await {
            Ok(Some(Destroyed::Counted(c))) => {
                (seen, messages) = (seen + c.destroyed, messages + 1)
            }
            other => panic!("after {seen} of {n}: {other:?}"),
        }
    }
    assert_eq!(seen, n, "more destroys than there were counted sockets");
    messages
}

/// A wave's notifications reach the drain a turn's worth at a time, not one message per socket: one
/// count per turn of up to 257 datagrams. Every destroy is still counted, by the watch read directly
/// and by one run as a task.
#[test]
fn a_wave_of_destroys_is_counted_in_a_few_messages() {
    const WAVE: usize = 400;
    // Both ends of each connection are freed (the clients' notifications do not count): 2 × WAVE
    // datagrams, read 257 a turn.
    const TURNS: usize = (2 * WAVE).div_ceil(257) + 1;
    in_own_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut server = Server::bind("127.0.0.1:0");
            let port = server.addr().port();
            let spec = spec(&[port], &[]);
            let (Some(mut read), Some(spawned), Some(mut all)) = (
                subscribe_or_skip(&spec),
                subscribe_or_skip(&spec),
                subscribe_or_skip(&spec),
            ) else {
                return;
            };
            let clients = server.connect(server.addr(), WAVE);
            drop(clients);
            server.accepted.clear();
            assert_eq!(destroyed(&mut all, WAVE).await, WAVE);
            // The kernel delivers each notification to one subscriber after the other: a moment
            // for the last ones to reach the other two too.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut counts = Vec::new();
            while let Some(c) = read.try_next().expect("destroy watch") {
                counts.push(c.destroyed);
            }
            assert_eq!(counts.iter().sum::<usize>(), WAVE, "{counts:?}");
            assert!(counts.len() <= TURNS, "one count per turn: {counts:?}");

            let mut rx = spawned.spawn();
            let messages = messages_for(&mut rx, WAVE, Duration::from_secs(5)).await;
            assert!(messages <= TURNS, "{messages} messages for {WAVE} destroys");
        })
    });
}

/// Voluntary context switches of thread `tid` of this process so far: how often it slept and was woken.
fn wake_ups(tid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Destroys that come one by one, about one every 0.3 ms, are read in turns of what came meanwhile, at
/// most one turn every 2 ms, and the watch's thread is not woken for each: every wake-up costs tens of
/// µs of CPU on a VM, and one per destroyed socket was most of the agent's CPU during a 100k wave
/// (43,000 wake-ups of its runtime's thread in one drain, with turns paced but the socket left on the
/// runtime's poll). The watch runs on a runtime of its own thread, whose wake-ups are counted. Every
/// destroy is still counted.
#[test]
fn a_trickle_of_destroys_wakes_the_watch_every_few_ms_not_for_each() {
    in_own_netns(trickle);
}

fn trickle() {
    const N: usize = 400;
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let Some(watch) = subscribe_or_skip(&spec(&[port], &[])) else {
        return;
    };
    let clients = server.connect(server.addr(), N);
    let accepted = std::mem::take(&mut server.accepted);
    let (ready, watching) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let mut rx = watch.spawn();
            tokio::task::yield_now().await;
            let before = wake_ups(tid);
            ready.send(()).unwrap();
            let messages = messages_for(&mut rx, N, Duration::from_secs(10)).await;
            (messages, wake_ups(tid) - before)
        })
    });
    watching.recv().unwrap();
    let begun = Instant::now();
    for (client, ours) in clients.into_iter().zip(accepted) {
        drop(client);
        drop(ours);
        std::thread::sleep(Duration::from_micros(250));
    }
    let (messages, woken) = watcher.join().unwrap();
    let took = begun.elapsed();
    // A turn every 2 ms at most, each woken for twice (its timer, then the socket), and a few more.
    let turns = took.as_millis() as u64 / 2 + 2;
    assert!(
        messages as u64 <= turns,
        "{messages} counts for {N} destroys over {took:?}: at most one turn every 2 ms ({turns})"
    );
    assert!(
        woken <= 2 * turns + 10,
        "the watch's thread was woken {woken} times for {N} destroys over {took:?} (bound {})",
        2 * turns + 10
    );
}

#[tokio::test]
async fn open_with_destroy_counts_down_the_counted_sockets() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let spec = spec(&[port], &[]);
    let mut clients = server.connect(server.addr(), 4);
    let (mut census, rx) = census::open_with_destroy(&spec);
    let Some(mut rx) = rx else {
        eprintln!("SKIP: destroy notifications not permitted here");
        return;
    };
    assert_eq!(census.count().unwrap().established, 4);
    assert_eq!(
        census.recheck().unwrap().unwrap(),
        4,
        "the drain's census keeps the ids for rechecks"
    );
    clients.truncate(1);
    server.accepted.truncate(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut seen = 0;
    while seen < 3 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(census::Destroyed::Counted(c))) => seen += c.destroyed,
            Ok(Some(census::Destroyed::Lost)) => panic!("four notifications overran the buffer"),
            _ => break,
        }
    }
    assert_eq!(seen, 3);
}

#[test]
fn errors_name_what_failed() {
    let e = CensusError::ProcLine {
        file: "/proc/net/tcp6".into(),
        line: 7,
        reason: "bad state \"ZZ\"".into(),
    };
    assert_eq!(
        e.to_string(),
        "census: /proc/net/tcp6: line 7: bad state \"ZZ\""
    );
}

/// Census cost at scale vs `ss` (not part of the suite: `cargo test --test census_live -- --ignored
/// --nocapture census_cost`; `CENSUS_N` sockets on the port, default 10000, plus 2000 on another).
#[test]
#[ignore]
fn census_cost() {
    let n: usize = std::env::var("CENSUS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
        .min(60_000);
    common::raise_nofile(4 * n as u64 + 10_000);
    let target = Server::bind("127.0.0.1:0");
    let noise = Server::bind("127.0.0.1:0");
    let pile = |server: &Server, n: usize| -> (Vec<TcpStream>, Vec<TcpStream>) {
        let port = server.addr().port();
        let mut clients = Vec::with_capacity(n);
        let mut accepted = Vec::with_capacity(n);
        for i in 0..n {
            // Several source addresses so the ephemeral port range is not the limit.
            clients.push(connect_from([127, 0, 1, (i % 200) as u8 + 1], port));
            accepted.push(server.listener.accept().expect("accept").0);
        }
        (clients, accepted)
    };
    let (target_clients, _target_accepted) = pile(&target, n);
    let _o = pile(&noise, 2_000);
    let port = target.addr().port();
    let spec = spec(&[port], &[]);
    let time = |c: &mut dyn Census| {
        assert_eq!(c.count().unwrap().established, n);
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            assert_eq!(c.count().unwrap().established, n);
            best = best.min(t.elapsed());
        }
        best
    };
    let combined = time(&mut NetlinkCensus::with_mode(spec.clone(), DumpMode::Combined).unwrap());
    let per_family =
        time(&mut NetlinkCensus::with_mode(spec.clone(), DumpMode::PerFamily).unwrap());
    let proc = time(&mut ProcCensus::new(spec.clone()));
    let mut ss = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let out = std::process::Command::new("ss")
            .args([
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ])
            .output()
            .expect("ss");
        ss = ss.min(t.elapsed());
        assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), n);
    }
    // A recheck while every counted socket is open (it stops at the first): what the drain pays
    // every `RECHECK_EVERY` while connections wait, where the census counted few enough to keep.
    let recheck = {
        let mut c = NetlinkCensus::new(spec.clone()).unwrap();
        c.count().unwrap();
        match c.recheck() {
            None => None,
            Some(_) => {
                let t = Instant::now();
                for _ in 0..10_000 {
                    assert_eq!(c.recheck().unwrap().unwrap(), n);
                }
                Some(t.elapsed() / 10_000)
            }
        }
    };
    // Rechecks that find every counted socket gone (the clients half-closed, the application did
    // not close: CLOSE_WAIT), per socket: what following a wave costs.
    let mut c = NetlinkCensus::new(spec.clone()).unwrap();
    c.count().unwrap();
    for client in &target_clients {
        client.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut watch = NetlinkCensus::new(spec.clone()).unwrap();
    assert_eq!(
        wait_established(&mut watch, 0, Duration::from_secs(30)),
        Ok(())
    );
    let (t, mut rechecks) = (Instant::now(), 0);
    while c.recheck().unwrap().unwrap() > 0 {
        rechecks += 1;
    }
    let gone = t.elapsed();
    println!(
        "census of {n} sockets (+2000 noise, best of 5): netlink combined {combined:?}, \
         netlink per family {per_family:?}, /proc {proc:?}, ss {ss:?}; a recheck {recheck:?} \
         (mean of 10,000; None: more than it keeps); rechecks finding all {n} gone: {gone:?} \
         ({:?} a socket, {} rechecks)",
        gone / n as u32,
        rechecks + 1
    );
}

/// A TCP connection to 127.0.0.1:`port` from `src` (an ephemeral port there).
fn connect_from(src: [u8; 4], port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket, bound and connected with valid sockaddr_in values, then owned by the
    // TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = addr(src, 0);
        assert_eq!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len),
            0,
            "bind"
        );
        let remote = addr([127, 0, 0, 1], port);
        assert_eq!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}
