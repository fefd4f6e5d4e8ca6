//! The data plane: a real TCP load balancer on loopback, one [`Listener`] per ELB listener.
//!
//! Client connections are proxied (bytes intact, half-closes propagated, Nagle off on both legs) to
//! the pool's members by weighted round robin, skipping unhealthy and zero-weight members; a member
//! that refuses the connection is skipped for the next one, once. The rule the whole project rests on
//! holds exactly: a member removed from the pool (or set to weight 0) gets no *new* connections, and
//! the connections already proxied to it stay open and keep flowing until a side closes them.
//!
//! With the pool's `connection_drain` enabled, the listener cuts a member's connections itself, with
//! a clean close (FIN both ways, never a reset), the drain timeout after the member left service:
//! removed, weight 0 or failing its health check, the three triggers of the real ELB. A member that
//! comes back before the timeout keeps its connections; one that comes back later starts afresh.
//!
//! A real ELB applies a removal some time after the API answered (configuration propagation), and
//! keeps sending new connections to the member until then. The view carries such members as
//! [`Lingering`] with the instant their routing stops (`settings.propagation_delay` after the change,
//! see [`crate::state::Inner::publish`]): until then they get new connections as before, and their
//! connection-drain timer starts only then. Health-check failures are not delayed: the load balancer
//! sees those itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A member that neither accepts nor refuses (a black hole) must not hold a client forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After a drain cut, how long the closing sockets are read (and the bytes dropped) so that the
/// kernel closes them with a FIN rather than a reset for unread data.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// One member as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub member_id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
}

impl Backend {
    /// Whether the member may receive new connections.
    pub fn in_service(&self) -> bool {
        self.weight > 0 && self.healthy
    }
}

/// A member removed (or set to weight 0) that the load balancer still routes to until `until`: the
/// removal has not propagated yet. `backend` is the member as it was while in service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lingering {
    pub backend: Backend,
    pub until: Instant,
}

/// The pool behind a listener, republished on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub backends: Vec<Backend>,
    /// `connection_drain` of the pool, when enabled.
    pub drain_timeout: Option<Duration>,
    /// Members out of `backends`' service whose removal has not reached the data plane yet.
    pub lingering: Vec<Lingering>,
}

impl PoolView {
    /// The members that may receive a new connection at `now`: those in service, and those whose
    /// removal is still propagating.
    fn routable(&self, now: Instant) -> impl Iterator<Item = &Backend> {
        let serving = self.backends.iter().filter(|b| b.in_service());
        let lingering = self
            .lingering
            .iter()
            .filter(move |l| l.until > now)
            .filter(|l| {
                !self
                    .backends
                    .iter()
                    .any(|b| b.in_service() && b.member_id == l.backend.member_id)
            })
            .map(|l| &l.backend);
        serving.chain(lingering)
    }

    /// The lingering members of `new` after this view is replaced by it at `now`: those of this view
    /// still lingering, plus those this view served and `new` removed or set to weight 0 (an unhealthy
    /// member does not linger), routed to until `now + delay`. A member back in service lingers no more.
    pub fn lingering_after(&self, new: &PoolView, now: Instant, delay: Duration) -> Vec<Lingering> {
        let serving_in_new = |id: &str| {
            new.backends
                .iter()
                .any(|b| b.member_id == id && b.in_service())
        };
        let mut out: Vec<Lingering> = self
            .lingering
            .iter()
            .filter(|l| l.until > now && !serving_in_new(&l.backend.member_id))
            .cloned()
            .collect();
        if delay.is_zero() {
            return out;
        }
        for old in self.backends.iter().filter(|b| b.in_service()) {
            if serving_in_new(&old.member_id)
                || out.iter().any(|l| l.backend.member_id == old.member_id)
            {
                continue;
            }
            let unhealthy = new
                .backends
                .iter()
                .any(|b| b.member_id == old.member_id && !b.healthy);
            if !unhealthy {
                out.push(Lingering {
                    backend: old.clone(),
                    until: now + delay,
                });
            }
        }
        out
    }
}

struct MemberStats {
    live: usize,
    accepted: u64,
    /// Held by every connection to this member; cancelled (and replaced, so that the member's later
    /// connections are not affected) when the connection-drain timeout expires.
    cut: CancellationToken,
}

impl Default for MemberStats {
    fn default() -> Self {
        MemberStats {
            live: 0,
            accepted: 0,
            cut: CancellationToken::new(),
        }
    }
}

#[derive(Default)]
struct Table {
    members: HashMap<String, MemberStats>,
    /// Weighted round-robin position.
    next: usize,
    /// Views the drain task has taken into account: `watch` keeps only the latest value, so tests
    /// wait on this before sending the next one.
    #[cfg(test)]
    views_applied: u64,
}

type SharedTable = Arc<Mutex<Table>>;

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // The table holds counters only: a panic elsewhere cannot leave it inconsistent.
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// A listening port of the load balancer. Its tasks stop when the `cancel` token given to
/// [`Listener::bind`] is cancelled.
pub struct Listener {
    addr: SocketAddr,
    table: SharedTable,
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        view: watch::Receiver<PoolView>,
        cancel: CancellationToken,
    ) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr).await?;
        let addr = socket.local_addr()?;
        let table = SharedTable::default();
        tokio::spawn(enforce_drain(view.clone(), table.clone(), cancel.clone()));
        tokio::spawn(accept_loop(socket, view, table.clone(), cancel));
        Ok(Listener { addr, table })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Proxied connections to the member open right now.
    pub fn live_connections(&self, member_id: &str) -> usize {
        lock(&self.table)
            .members
            .get(member_id)
            .map_or(0, |m| m.live)
    }

    /// Connections ever proxied to the member.
    pub fn accepted(&self, member_id: &str) -> u64 {
        lock(&self.table)
            .members
            .get(member_id)
            .map_or(0, |m| m.accepted)
    }

    /// (member, live, accepted) for every member this listener has picked, sorted by member.
    pub fn stats(&self) -> Vec<(String, usize, u64)> {
        let mut out: Vec<_> = lock(&self.table)
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.live, m.accepted))
            .collect();
        out.sort();
        out
    }
}

/// Decrements a member's live count however the connection ends.
struct LiveGuard {
    table: SharedTable,
    member: String,
}

impl LiveGuard {
    fn register(table: &SharedTable, member: &str) -> LiveGuard {
        let mut t = lock(table);
        let m = t.members.entry(member.to_owned()).or_default();
        m.live += 1;
        m.accepted += 1;
        LiveGuard {
            table: table.clone(),
            member: member.to_owned(),
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Some(m) = lock(&self.table).members.get_mut(&self.member) {
            m.live = m.live.saturating_sub(1);
        }
    }
}

/// Picks the next in-service backend by weighted round robin, with the cut token its connection
/// will hold. Taking the token here, before connecting, means a drain cut that fires while the
/// connect is under way still reaches the new connection.
fn pick(
    view: &PoolView,
    table: &mut Table,
    skip: Option<&str>,
) -> Option<(Backend, CancellationToken)> {
    let eligible: Vec<&Backend> = view
        .routable(Instant::now())
        // Loopback only: elb-sim never proxies a connection off the machine.
        .filter(|b| b.addr.ip().is_loopback() && Some(b.member_id.as_str()) != skip)
        .collect();
    let total: u64 = eligible.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    // `next` only grows, so `slot` walks 0..total over and over: each member gets `weight` slots.
    let slot = table.next as u64 % total;
    table.next = table.next.wrapping_add(1);
    let mut acc = 0;
    let chosen = eligible.into_iter().find(|b| {
        acc += u64::from(b.weight);
        slot < acc
    })?;
    let cut = table
        .members
        .entry(chosen.member_id.clone())
        .or_default()
        .cut
        .clone();
    Some((chosen.clone(), cut))
}

/// Accepts until cancelled; returning drops the socket, so the port then refuses connections.
async fn accept_loop(
    socket: TcpListener,
    view: watch::Receiver<PoolView>,
    table: SharedTable,
    cancel: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            r = socket.accept() => match r {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(error = %e, "data plane: accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        _ = cancel.cancelled() => return,
                    }
                }
            },
            _ = cancel.cancelled() => return,
        };
        tokio::spawn(serve(client, view.clone(), table.clone(), cancel.clone()));
    }
}

/// Carries one client connection: choose a member, connect (one retry elsewhere), proxy.
async fn serve(
    client: TcpStream,
    view: watch::Receiver<PoolView>,
    table: SharedTable,
    cancel: CancellationToken,
) {
    let mut skip: Option<String> = None;
    for _ in 0..2 {
        // The latest view at connect time, not the one when the client arrived.
        let picked = {
            let view = view.borrow();
            pick(&view, &mut lock(&table), skip.as_deref())
        };
        let Some((backend, cut)) = picked else {
            break;
        };
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr));
        let outcome = tokio::select! {
            r = connect => r,
            _ = cancel.cancelled() => return,
        };
        match outcome {
            Ok(Ok(upstream)) => {
                let guard = LiveGuard::register(&table, &backend.member_id);
                proxy(client, upstream, guard, cut, cancel).await;
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(member = %backend.member_id, error = %e, "data plane: member refused");
            }
            Err(_) => {
                tracing::debug!(member = %backend.member_id, "data plane: connect timed out");
            }
        }
        skip = Some(backend.member_id);
    }
    tracing::debug!("data plane: no member available, closing the client");
    close_cleanly(client, None).await;
}

async fn proxy(
    mut client: TcpStream,
    mut upstream: TcpStream,
    guard: LiveGuard,
    cut: CancellationToken,
    cancel: CancellationToken,
) {
    // The proxy must not delay small writes: both legs send at once.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(member = %guard.member, error = %e, "data plane: connection ended with an error");
            }
        }
        _ = cut.cancelled() => {
            tracing::debug!(member = %guard.member, "data plane: connection drain timeout, closing");
            // The connection is over for the load balancer from here: count it out first.
            drop(guard);
            close_cleanly(client, Some(upstream)).await;
        }
        _ = cancel.cancelled() => {
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
    }
}

/// Sends FIN on both sockets, then reads and drops what the peers still send until they close too
/// (at most [`CLOSE_LINGER`]): closing a socket with unread data would send a reset instead.
async fn close_cleanly(mut client: TcpStream, upstream: Option<TcpStream>) {
    let _ = client.shutdown().await;
    let mut upstream = upstream;
    if let Some(u) = upstream.as_mut() {
        let _ = u.shutdown().await;
    }
    let drain_both = async {
        let c = discard(&mut client);
        match upstream.as_mut() {
            Some(u) => {
                tokio::join!(c, discard(u));
            }
            None => c.await,
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain_both).await;
}

async fn discard(r: &mut (impl AsyncRead + Unpin)) {
    let _ = tokio::io::copy(r, &mut tokio::io::sink()).await;
}

/// A member out of service (removed, weight 0 or unhealthy) and its pending drain cut.
struct Departure {
    left_at: Instant,
    deadline: Option<Instant>,
    /// Stops the pending cut (the member came back, or the timeout changed).
    disarm: Option<CancellationToken>,
}

/// Follows the view and applies `connection_drain`: a member that leaves service has its
/// connections cut `drain_timeout` after it left, unless it comes back first.
async fn enforce_drain(
    mut view: watch::Receiver<PoolView>,
    table: SharedTable,
    cancel: CancellationToken,
) {
    let mut serving: HashSet<String> = HashSet::new();
    let mut departed: HashMap<String, Departure> = HashMap::new();
    loop {
        let current = view.borrow_and_update().clone();
        let now = Instant::now();
        let now_serving: HashSet<String> = current
            .backends
            .iter()
            .filter(|b| b.in_service())
            .map(|b| b.member_id.clone())
            .collect();
        for gone in serving.difference(&now_serving) {
            // Still routed to while its removal propagates: it leaves service when that ends.
            let left_at = current
                .lingering
                .iter()
                .find(|l| l.backend.member_id == *gone)
                .map_or(now, |l| l.until.max(now));
            departed.insert(
                gone.clone(),
                Departure {
                    left_at,
                    deadline: None,
                    disarm: None,
                },
            );
        }
        for back in &now_serving {
            if let Some(d) = departed.remove(back)
                && let Some(disarm) = d.disarm
            {
                disarm.cancel();
            }
        }
        serving = now_serving;
        #[cfg(test)]
        {
            lock(&table).views_applied += 1;
        }
        for (member, d) in &mut departed {
            let deadline = current.drain_timeout.map(|t| d.left_at + t);
            if d.deadline == deadline {
                continue;
            }
            if let Some(old) = d.disarm.take() {
                old.cancel();
            }
            d.deadline = deadline;
            if let Some(deadline) = deadline {
                let disarm = CancellationToken::new();
                d.disarm = Some(disarm.clone());
                tokio::spawn(cut_at(
                    deadline,
                    member.clone(),
                    table.clone(),
                    disarm,
                    cancel.clone(),
                ));
            }
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}

async fn cut_at(
    deadline: Instant,
    member: String,
    table: SharedTable,
    disarm: CancellationToken,
    cancel: CancellationToken,
) {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => {}
        _ = disarm.cancelled() => return,
        _ = cancel.cancelled() => return,
    }
    if let Some(m) = lock(&table).members.get_mut(&member) {
        // A fresh token for the member's next life; every connection of this one holds the old.
        std::mem::take(&mut m.cut).cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::sync::mpsc;

    /// How a backend saw one of its connections end.
    #[derive(Debug, PartialEq)]
    enum End {
        /// The peer sent FIN.
        Eof,
        /// Any error: a reset, mostly.
        Error(std::io::ErrorKind),
    }

    /// An echo server that reports how each of its connections ended.
    struct Echo {
        addr: SocketAddr,
        ends: mpsc::UnboundedReceiver<End>,
    }

    async fn echo() -> Echo {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, ends) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let end = loop {
                        match c.read(&mut buf).await {
                            Ok(0) => break End::Eof,
                            Ok(n) => {
                                if let Err(e) = c.write_all(&buf[..n]).await {
                                    break End::Error(e.kind());
                                }
                            }
                            Err(e) => break End::Error(e.kind()),
                        }
                    };
                    let _ = c.shutdown().await;
                    let _ = tx.send(end);
                });
            }
        });
        Echo { addr, ends }
    }

    impl Echo {
        async fn next_end(&mut self) -> End {
            tokio::time::timeout(Duration::from_secs(5), self.ends.recv())
                .await
                .expect("a connection ended in time")
                .expect("server alive")
        }
    }

    fn backend(id: &str, addr: SocketAddr, weight: u32) -> Backend {
        Backend {
            member_id: id.into(),
            addr,
            weight,
            healthy: true,
        }
    }

    fn view(backends: Vec<Backend>, drain_timeout: Option<Duration>) -> PoolView {
        PoolView {
            backends,
            drain_timeout,
            lingering: Vec::new(),
        }
    }

    async fn lb(initial: PoolView) -> (Listener, watch::Sender<PoolView>, CancellationToken) {
        let (tx, rx) = watch::channel(initial);
        let cancel = CancellationToken::new();
        let lb = Listener::bind("127.0.0.1:0".parse().unwrap(), rx, cancel.clone())
            .await
            .unwrap();
        wait_for(|| lock(&lb.table).views_applied >= 1).await;
        (lb, tx, cancel)
    }

    /// Publishes a view and waits until the listener has taken it into account.
    async fn set(lb: &Listener, tx: &watch::Sender<PoolView>, v: PoolView) {
        let before = lock(&lb.table).views_applied;
        tx.send_replace(v);
        wait_for(|| lock(&lb.table).views_applied > before).await;
    }

    async fn roundtrip(c: &mut TcpStream, msg: &str) -> std::io::Result<String> {
        c.write_all(format!("{msg}\n").as_bytes()).await?;
        let mut line = String::new();
        let mut r = BufReader::new(c);
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .map_err(std::io::Error::other)??;
        Ok(line.trim_end().to_owned())
    }

    /// Opens a connection through the load balancer and proves it reaches an echo server.
    async fn open(lb: &Listener, tag: &str) -> TcpStream {
        let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
        assert_eq!(roundtrip(&mut c, tag).await.unwrap(), tag);
        c
    }

    /// What the next read on `c` yields within 5 s: `Ok(0)` is a clean close.
    async fn next_read(c: &mut TcpStream) -> std::io::Result<usize> {
        let mut buf = [0u8; 64];
        tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("the read finished in time")
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn weighted_round_robin_skips_unhealthy_and_zero_weight_members() {
        let (a, b) = (echo().await, echo().await);
        let mut unhealthy = backend("c", a.addr, 5);
        unhealthy.healthy = false;
        let (lb, _tx, _cancel) = lb(view(
            vec![
                backend("a", a.addr, 3),
                backend("b", b.addr, 1),
                unhealthy,
                backend("z", b.addr, 0),
            ],
            None,
        ))
        .await;
        for i in 0..8 {
            open(&lb, &i.to_string()).await;
        }
        let got: Vec<u64> = ["a", "b", "c", "z"]
            .iter()
            .map(|m| lb.accepted(m))
            .collect();
        assert_eq!(got, [6, 2, 0, 0]);
    }

    #[tokio::test]
    async fn removed_members_get_no_new_connections_and_keep_the_old_ones() {
        let (mut a, b) = (echo().await, echo().await);
        let (lb, tx, _cancel) = lb(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            None,
        ))
        .await;
        let mut conns = Vec::new();
        for i in 0..6 {
            conns.push(open(&lb, &format!("m{i}")).await);
        }
        assert_eq!((lb.live_connections("a"), lb.live_connections("b")), (3, 3));
        tx.send_replace(view(vec![backend("b", b.addr, 1)], None));
        for i in 0..4 {
            open(&lb, &format!("n{i}")).await;
        }
        assert_eq!(
            lb.accepted("a"),
            3,
            "no new connection to the removed member"
        );
        assert_eq!(lb.accepted("b"), 7);
        for c in &mut conns {
            assert_eq!(
                roundtrip(c, "still").await.unwrap(),
                "still",
                "old connections keep flowing"
            );
        }
        assert_eq!(lb.live_connections("a"), 3);
        // The clients close: the removed member sees three FINs and no reset.
        for c in &mut conns {
            c.shutdown().await.unwrap();
            assert_eq!(next_read(c).await.unwrap(), 0, "closed cleanly");
        }
        for _ in 0..3 {
            assert_eq!(a.next_end().await, End::Eof);
        }
        wait_for(|| lb.live_connections("a") == 0 && lb.live_connections("b") == 0).await;
        assert_eq!(lb.stats(), [("a".into(), 0, 3), ("b".into(), 0, 7)]);
    }

    #[tokio::test]
    async fn a_member_at_weight_zero_is_skipped_until_it_is_weighted_again() {
        let (a, b) = (echo().await, echo().await);
        let (lb, tx, _cancel) = lb(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            None,
        ))
        .await;
        let mut old = open(&lb, "first").await;
        assert_eq!(lb.accepted("a"), 1);
        tx.send_replace(view(
            vec![backend("a", a.addr, 0), backend("b", b.addr, 1)],
            None,
        ));
        for i in 0..4 {
            open(&lb, &i.to_string()).await;
        }
        assert_eq!((lb.accepted("a"), lb.accepted("b")), (1, 4));
        assert_eq!(roundtrip(&mut old, "alive").await.unwrap(), "alive");
        // Re-registered: it takes its share of new connections again.
        tx.send_replace(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            None,
        ));
        for i in 0..4 {
            open(&lb, &i.to_string()).await;
        }
        assert_eq!((lb.accepted("a"), lb.accepted("b")), (3, 6));
    }

    #[tokio::test]
    async fn a_refusing_member_is_skipped_for_the_next() {
        let good = echo().await;
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
            // dropped here: the port refuses from now on
        };
        let (lb, _tx, _cancel) = lb(view(
            vec![backend("dead", dead, 1), backend("good", good.addr, 1)],
            None,
        ))
        .await;
        for i in 0..4 {
            open(&lb, &i.to_string()).await;
        }
        assert_eq!((lb.accepted("good"), lb.accepted("dead")), (4, 0));
        assert_eq!(lb.live_connections("dead"), 0);
    }

    #[tokio::test]
    async fn with_no_member_available_the_client_is_closed() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let mut sick = backend("sick", dead, 1);
        sick.healthy = false;
        for members in [vec![], vec![sick], vec![backend("dead", dead, 1)]] {
            let (lb, _tx, _cancel) = lb(view(members, None)).await;
            let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
            assert_eq!(next_read(&mut c).await.unwrap(), 0, "closed with a FIN");
            assert!(
                lb.stats()
                    .iter()
                    .all(|(_, live, accepted)| (*live, *accepted) == (0, 0))
            );
        }
    }

    #[tokio::test]
    async fn bytes_pass_intact_and_half_closes_reach_the_other_side() {
        // A member that answers only once the client has finished sending: the client's FIN must
        // reach it through the proxy, and its answer must still come back after that FIN.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    if c.read_to_end(&mut all).await.is_ok() {
                        all.reverse();
                        let _ = c.write_all(&all).await;
                    }
                    let _ = c.shutdown().await;
                });
            }
        });
        let (lb, _tx, _cancel) = lb(view(vec![backend("m", addr, 1)], None)).await;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
        c.write_all(&payload).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
            .await
            .expect("the member saw the half-close and answered")
            .unwrap();
        let mut expected = payload;
        expected.reverse();
        assert!(
            back == expected,
            "{} bytes back, not the reversed payload",
            back.len()
        );
        wait_for(|| lb.live_connections("m") == 0).await;
        assert_eq!(lb.accepted("m"), 1);
    }

    #[tokio::test]
    async fn connection_drain_cuts_a_removed_members_connections_cleanly_after_its_timeout() {
        let timeout = Duration::from_millis(300);
        let (mut a, b) = (echo().await, echo().await);
        let (lb, tx, _cancel) = lb(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            Some(timeout),
        ))
        .await;
        let (mut on_a, mut on_b) = (open(&lb, "x").await, open(&lb, "y").await);
        assert_eq!((lb.live_connections("a"), lb.live_connections("b")), (1, 1));
        let removed = Instant::now();
        tx.send_replace(view(vec![backend("b", b.addr, 1)], Some(timeout)));
        assert_eq!(roundtrip(&mut on_a, "during").await.unwrap(), "during");
        assert_eq!(next_read(&mut on_a).await.unwrap(), 0, "a FIN, not a reset");
        assert!(removed.elapsed() >= timeout, "not before the drain timeout");
        assert_eq!(a.next_end().await, End::Eof, "the member got a FIN too");
        assert_eq!(lb.live_connections("a"), 0);
        assert_eq!(roundtrip(&mut on_b, "kept").await.unwrap(), "kept");
        assert_eq!(lb.live_connections("b"), 1);
    }

    #[tokio::test]
    async fn the_drain_cut_is_a_clean_close_even_with_unread_bytes_in_flight() {
        // A member that never reads: the client's bytes back up into the proxy's own socket, where
        // a plain close would answer them with a reset.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (held_tx, mut held) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((c, _)) = l.accept().await {
                let _ = held_tx.send(c);
            }
        });
        let timeout = Duration::from_millis(200);
        let (lb, tx, _cancel) = lb(view(vec![backend("m", addr, 1)], Some(timeout))).await;
        let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
        let _member_side = held.recv().await.unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut stalled = false;
        for _ in 0..20_000 {
            match tokio::time::timeout(Duration::from_millis(200), c.write(&chunk)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("write failed before the cut: {e}"),
                Err(_) => {
                    stalled = true;
                    break;
                }
            }
        }
        assert!(stalled, "the stalled member never pushed back");
        tx.send_replace(view(vec![], Some(timeout)));
        assert_eq!(next_read(&mut c).await.unwrap(), 0, "a FIN");
        // After a reset this write fails; after a clean close the proxy still takes (and drops)
        // the bytes for a moment.
        let more = tokio::time::timeout(Duration::from_millis(500), c.write(&chunk)).await;
        assert!(
            matches!(more, Ok(Ok(n)) if n > 0),
            "no reset after the cut: {more:?}"
        );
        wait_for(|| lb.live_connections("m") == 0).await;
    }

    #[tokio::test]
    async fn weight_zero_and_a_failed_health_check_also_start_the_drain() {
        let timeout = Duration::from_millis(200);
        let (w, h, s) = (echo().await, echo().await, echo().await);
        let all = |w_weight, h_healthy| {
            let mut hb = backend("h", h.addr, 1);
            hb.healthy = h_healthy;
            view(
                vec![backend("w", w.addr, w_weight), hb, backend("s", s.addr, 1)],
                Some(timeout),
            )
        };
        let (lb, tx, _cancel) = lb(all(1, true)).await;
        let mut conns = Vec::new();
        for i in 0..3 {
            conns.push(open(&lb, &i.to_string()).await);
        }
        assert_eq!(
            lb.stats().iter().map(|s| s.1).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        tx.send_replace(all(0, false));
        let [on_w, on_h, on_s] = &mut conns[..] else {
            unreachable!()
        };
        assert_eq!(next_read(on_w).await.unwrap(), 0);
        assert_eq!(next_read(on_h).await.unwrap(), 0);
        assert_eq!(roundtrip(on_s, "stays").await.unwrap(), "stays");
        assert_eq!(
            (
                lb.live_connections("w"),
                lb.live_connections("h"),
                lb.live_connections("s")
            ),
            (0, 0, 1)
        );
    }

    #[tokio::test]
    async fn a_member_back_before_the_drain_timeout_keeps_its_connections() {
        let timeout = Duration::from_millis(300);
        let (a, b) = (echo().await, echo().await);
        let both = view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            Some(timeout),
        );
        let (lb, tx, _cancel) = lb(both.clone()).await;
        let (mut on_a, mut on_b) = (open(&lb, "x").await, open(&lb, "y").await);
        // Both leave together; only `a` comes back. `b`'s cut marks the moment `a`'s would have come.
        set(&lb, &tx, view(vec![], Some(timeout))).await;
        set(&lb, &tx, both.clone()).await;
        set(&lb, &tx, view(vec![backend("a", a.addr, 1)], Some(timeout))).await;
        assert_eq!(next_read(&mut on_b).await.unwrap(), 0, "b was cut");
        assert_eq!(roundtrip(&mut on_a, "kept").await.unwrap(), "kept");
        assert_eq!(lb.live_connections("a"), 1);

        // `b`, cut once, comes back: its new connection must not share the old one's fate.
        tx.send_replace(both);
        let mut new_b = loop {
            let before = lb.accepted("b");
            let c = open(&lb, "probe").await;
            if lb.accepted("b") > before {
                break c;
            }
        };
        assert_eq!(lb.live_connections("b"), 1);
        // `a` leaves after `new_b` was opened: once `a` is cut, any stale timer of `b` would have been.
        let removed = Instant::now();
        tx.send_replace(view(vec![backend("b", b.addr, 1)], Some(timeout)));
        assert_eq!(next_read(&mut on_a).await.unwrap(), 0);
        assert!(removed.elapsed() >= timeout);
        wait_for(|| lb.live_connections("a") == 0).await;
        assert_eq!(roundtrip(&mut new_b, "alive").await.unwrap(), "alive");
        assert_eq!(lb.live_connections("b"), 1);
    }

    #[tokio::test]
    async fn a_drain_enabled_after_the_removal_counts_from_the_removal() {
        let (a, b) = (echo().await, echo().await);
        let (lb, tx, _cancel) = lb(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            None,
        ))
        .await;
        let (mut on_a, mut on_b) = (open(&lb, "x").await, open(&lb, "y").await);
        tx.send_replace(view(vec![backend("b", b.addr, 1)], None));
        assert_eq!(
            roundtrip(&mut on_a, "kept").await.unwrap(),
            "kept",
            "no drain, no cut"
        );
        // A timeout shorter than the time already spent out of service: the cut is due at once.
        tx.send_replace(view(vec![backend("b", b.addr, 1)], Some(Duration::ZERO)));
        assert_eq!(next_read(&mut on_a).await.unwrap(), 0);
        assert_eq!(roundtrip(&mut on_b, "kept").await.unwrap(), "kept");
    }

    #[test]
    fn removals_and_weight_zero_linger_for_the_delay_health_failures_do_not() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (d, now) = (Duration::from_secs(2), Instant::now());
        let mut sick = backend("h", addr, 1);
        sick.healthy = false;
        let old = view(
            vec![
                backend("r", addr, 3),
                backend("w", addr, 2),
                backend("h", addr, 1),
                backend("s", addr, 1),
            ],
            None,
        );
        // r removed, w at weight 0, h failing its health check, s unchanged.
        let new = view(
            vec![backend("w", addr, 0), sick, backend("s", addr, 1)],
            None,
        );
        let lingering = old.lingering_after(&new, now, d);
        assert_eq!(
            lingering,
            [
                Lingering {
                    backend: backend("r", addr, 3),
                    until: now + d
                },
                Lingering {
                    backend: backend("w", addr, 2),
                    until: now + d
                },
            ],
            "as they were in service, until the delay is over"
        );
        assert!(old.lingering_after(&new, now, Duration::ZERO).is_empty());
        let mut next = new.clone();
        next.lingering = lingering;
        let routed: Vec<&str> = next.routable(now).map(|b| b.member_id.as_str()).collect();
        assert_eq!(routed, ["s", "r", "w"]);
        assert_eq!(next.routable(now + d).count(), 1, "only s once it is over");
        // Carried over while it lasts, dropped when over, or when the member is back in service.
        let later = next.lingering_after(&next.clone(), now + Duration::from_secs(1), d);
        assert_eq!(later.len(), 2);
        assert!(next.lingering_after(&next.clone(), now + d, d).is_empty());
        let back = view(
            vec![
                backend("r", addr, 1),
                backend("w", addr, 0),
                backend("s", addr, 1),
            ],
            None,
        );
        let after_back = next.lingering_after(&back, now, d);
        assert_eq!(after_back.len(), 1);
        assert_eq!(after_back[0].backend.member_id, "w");
    }

    #[tokio::test]
    async fn a_removed_member_gets_new_connections_until_its_removal_has_propagated() {
        let (a, b) = (echo().await, echo().await);
        let timeout = Duration::from_millis(300);
        let delay = Duration::from_millis(1000);
        let both = view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            Some(timeout),
        );
        let (lb, tx, _cancel) = lb(both.clone()).await;
        let mut first = open(&lb, "first").await;
        assert_eq!(lb.accepted("a"), 1);
        let removed = Instant::now();
        let mut gone = view(vec![backend("b", b.addr, 1)], Some(timeout));
        gone.lingering = both.lingering_after(&gone, removed, delay);
        set(&lb, &tx, gone).await;
        for i in 0..4 {
            open(&lb, &i.to_string()).await;
        }
        assert!(removed.elapsed() < delay, "too slow to test the delay");
        assert_eq!(
            lb.accepted("a"),
            3,
            "still its share while the removal propagates"
        );
        // The condition is the passage of time itself: the propagation is over.
        tokio::time::sleep_until(removed + delay).await;
        for i in 0..4 {
            open(&lb, &i.to_string()).await;
        }
        assert_eq!(lb.accepted("a"), 3, "none once it has propagated");
        // The drain timer started when the routing stopped, not at the API change.
        assert_eq!(next_read(&mut first).await.unwrap(), 0);
        assert!(
            removed.elapsed() >= delay + timeout,
            "{:?}",
            removed.elapsed()
        );
    }

    #[tokio::test]
    async fn cancel_closes_every_connection_and_the_port() {
        let (mut a, b) = (echo().await, echo().await);
        let (lb, _tx, cancel) = lb(view(
            vec![backend("a", a.addr, 1), backend("b", b.addr, 1)],
            None,
        ))
        .await;
        let mut conns = Vec::new();
        for i in 0..4 {
            conns.push(open(&lb, &i.to_string()).await);
        }
        cancel.cancel();
        for c in &mut conns {
            assert_eq!(next_read(c).await.unwrap(), 0);
        }
        for _ in 0..2 {
            assert_eq!(a.next_end().await, End::Eof);
        }
        wait_for(|| lb.stats().iter().all(|(_, live, _)| *live == 0)).await;
        let addr = lb.local_addr();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(addr).await {
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                    break;
                }
                Ok(_) => assert!(Instant::now() < deadline, "the port still accepts"),
            }
            tokio::task::yield_now().await;
        }
    }
}
