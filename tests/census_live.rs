//! The census against the real kernel: K connections opened here are counted exactly K times by both
//! the netlink and the /proc census, in both families, and their arrivals and departures are seen.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::wait_until;
use elb_drain::census::{Census, CensusSpec, NetlinkCensus, ProcCensus};

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
        self.listener.local_addr().unwrap()
    }

    fn connect(&mut self, to: SocketAddr, n: usize) -> Vec<TcpStream> {
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(to).expect("connect"))
            .collect();
        for _ in 0..n {
            self.accepted
                .push(self.listener.accept().expect("accept").0);
        }
        clients
    }
}

fn spec(port: u16, exclude: &[&str]) -> CensusSpec {
    CensusSpec {
        ports: vec![port],
        exclude_peers: exclude.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn both(spec: &CensusSpec) -> Vec<Box<dyn Census>> {
    vec![
        Box::new(NetlinkCensus::new(spec.clone()).expect("netlink")),
        Box::new(ProcCensus::new(spec.clone())),
    ]
}

fn settles_at(census: &mut dyn Census, want: usize) -> bool {
    wait_until(Duration::from_secs(5), || {
        census.count().map(|c| c.established).ok() == Some(want)
    })
}

#[test]
fn ipv4_connections_are_counted_exactly_by_both_backends() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let mut clients = server.connect(server.addr(), 7);
    for mut census in both(&spec(port, &[])) {
        assert_eq!(
            census.count().unwrap().established,
            7,
            "{:?}",
            census.backend()
        );
    }
    for mut census in both(&spec(port, &["127.0.0.0/8"])) {
        assert_eq!(
            census.count().unwrap().established,
            0,
            "excluded, {:?}",
            census.backend()
        );
    }
    // Arrivals: three more between two censuses of the same census value.
    let mut censuses = both(&spec(port, &[]));
    for c in censuses.iter_mut() {
        c.count().unwrap();
    }
    clients.extend(server.connect(server.addr(), 3));
    for c in censuses.iter_mut() {
        let count = c.count().unwrap();
        assert_eq!(
            (count.established, count.arrived),
            (10, 3),
            "{:?}",
            c.backend()
        );
        assert_eq!(c.count().unwrap().arrived, 0, "{:?}", c.backend());
    }
    // Departures: close four (both ends) and the count follows.
    clients.truncate(6);
    server.accepted.truncate(6);
    for mut c in both(&spec(port, &[])) {
        assert!(settles_at(c.as_mut(), 6), "{:?}", c.backend());
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
    for mut census in both(&spec(v6.addr().port(), &[])) {
        assert_eq!(
            census.count().unwrap().established,
            4,
            "{:?}",
            census.backend()
        );
    }
    for mut census in both(&spec(v6.addr().port(), &["::1/128"])) {
        assert_eq!(
            census.count().unwrap().established,
            0,
            "{:?}",
            census.backend()
        );
    }
    // A dual-stack listener on [::]: IPv4 clients arrive as v4-mapped AF_INET6 sockets.
    let mut dual = Server::bind("[::]:0");
    let port = dual.addr().port();
    let _c4 = dual.connect(SocketAddr::from(([127, 0, 0, 1], port)), 5);
    for mut census in both(&spec(port, &[])) {
        assert_eq!(
            census.count().unwrap().established,
            5,
            "{:?}",
            census.backend()
        );
    }
    for mut census in both(&spec(port, &["127.0.0.0/8"])) {
        assert_eq!(
            census.count().unwrap().established,
            0,
            "v4-mapped excluded, {:?}",
            census.backend()
        );
    }
}

#[tokio::test]
async fn destroy_notifications_report_closed_connections() {
    let mut server = Server::bind("127.0.0.1:0");
    let port = server.addr().port();
    let spec = spec(port, &[]);
    let watch = match elb_drain::census::DestroyWatch::subscribe(spec.clone()) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("SKIP: {e}");
            return;
        }
    };
    let mut rx = watch.spawn();
    let mut clients = server.connect(server.addr(), 5);
    clients.truncate(2);
    server.accepted.truncate(2);
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen < 3 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => seen += n,
            _ => break,
        }
    }
    assert_eq!(seen, 3, "three server-side sockets closed");
}
