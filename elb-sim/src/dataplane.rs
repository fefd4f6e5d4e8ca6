//! The data plane: a real TCP load balancer on loopback, one [`Listener`] per ELB listener.
//!
//! Client connections are proxied (bytes intact, half-closes propagated) to the pool's members by
//! weighted round robin, skipping unhealthy and zero-weight members. The rule the whole project rests
//! on holds exactly: a member removed from the pool (or set to weight 0) gets no *new* connections, and
//! the connections already proxied to it stay open and keep flowing until a side closes them. With the
//! pool's `connection_drain` enabled, the listener cuts a removed (or zero-weight, or unhealthy) member's
//! connections itself after the drain timeout, as the real ELB does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One member as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub member_id: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
}

/// The pool behind a listener, republished on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolView {
    pub backends: Vec<Backend>,
    /// `connection_drain` of the pool, when enabled.
    pub drain_timeout: Option<Duration>,
}

#[derive(Default)]
struct MemberStats {
    live: usize,
    accepted: u64,
    /// Cancelled to cut this member's connections (connection_drain after removal).
    cut: Option<CancellationToken>,
}

#[derive(Default)]
struct Shared {
    members: HashMap<String, MemberStats>,
    /// Weighted round-robin position.
    next: usize,
}

pub struct Listener {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

/// Decrements a member's live count however the connection ends.
struct LiveGuard {
    shared: Arc<Mutex<Shared>>,
    member: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = s.members.get_mut(&self.member) {
            m.live = m.live.saturating_sub(1);
        }
    }
}

impl Listener {
    pub async fn bind(
        addr: SocketAddr,
        view: watch::Receiver<PoolView>,
        cancel: CancellationToken,
    ) -> std::io::Result<Listener> {
        let socket = TcpListener::bind(addr).await?;
        let addr = socket.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        tokio::spawn(watch_removals(view.clone(), shared.clone(), cancel.clone()));
        tokio::spawn(accept_loop(socket, view, shared.clone(), cancel));
        Ok(Listener { addr, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn live_connections(&self, member_id: &str) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .get(member_id)
            .map_or(0, |m| m.live)
    }

    pub fn accepted(&self, member_id: &str) -> u64 {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .get(member_id)
            .map_or(0, |m| m.accepted)
    }

    /// (member, live, accepted) for every member this listener has sent a connection to.
    pub fn stats(&self) -> Vec<(String, usize, u64)> {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = s
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.live, m.accepted))
            .collect();
        out.sort();
        out
    }
}

/// Picks the next backend by weighted round robin among eligible ones.
fn pick(view: &PoolView, shared: &mut Shared, skip: Option<&str>) -> Option<Backend> {
    let eligible: Vec<&Backend> = view
        .backends
        .iter()
        .filter(|b| b.weight > 0 && b.healthy && Some(b.member_id.as_str()) != skip)
        .collect();
    let total: usize = eligible.iter().map(|b| b.weight as usize).sum();
    if total == 0 {
        return None;
    }
    let slot = shared.next % total;
    shared.next = shared.next.wrapping_add(1);
    let mut acc = 0;
    for b in eligible {
        acc += b.weight as usize;
        if slot < acc {
            return Some(b.clone());
        }
    }
    None
}

async fn accept_loop(
    socket: TcpListener,
    view: watch::Receiver<PoolView>,
    shared: Arc<Mutex<Shared>>,
    cancel: CancellationToken,
) {
    loop {
        let (client, _) = tokio::select! {
            r = socket.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "data plane: accept failed");
                    continue;
                }
            },
            _ = cancel.cancelled() => return,
        };
        let view = view.borrow().clone();
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut skip = None;
            // One retry on another member if the first refuses.
            for _ in 0..2 {
                let Some(backend) = pick(
                    &view,
                    &mut shared.lock().unwrap_or_else(|p| p.into_inner()),
                    skip.as_deref(),
                ) else {
                    break;
                };
                match TcpStream::connect(backend.addr).await {
                    Ok(upstream) => {
                        proxy(client, upstream, backend.member_id, shared, cancel).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(member = %backend.member_id, error = %e, "data plane: member refused");
                        skip = Some(backend.member_id);
                    }
                }
            }
            // No member available: close the client cleanly.
        });
    }
}

async fn proxy(
    mut client: TcpStream,
    mut upstream: TcpStream,
    member: String,
    shared: Arc<Mutex<Shared>>,
    cancel: CancellationToken,
) {
    let cut = {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        let m = s.members.entry(member.clone()).or_default();
        m.live += 1;
        m.accepted += 1;
        m.cut.get_or_insert_with(CancellationToken::new).clone()
    };
    let _guard = LiveGuard { shared, member };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.cancelled() => {
            // connection_drain expired: a clean close on both sides, as the real ELB does.
            let _ = client.shutdown().await;
            let _ = upstream.shutdown().await;
        }
        _ = cancel.cancelled() => {}
    }
}

/// Arms the connection-drain cut for members that leave the pool (removed, weight 0, or failing their
/// health check, the three triggers of the real ELB), and disarms it when they return.
async fn watch_removals(
    mut view: watch::Receiver<PoolView>,
    shared: Arc<Mutex<Shared>>,
    cancel: CancellationToken,
) {
    let mut pending: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let current = view.borrow_and_update().clone();
        let active: Vec<&str> = current
            .backends
            .iter()
            .filter(|b| b.weight > 0 && b.healthy)
            .map(|b| b.member_id.as_str())
            .collect();
        let known: Vec<String> = shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .members
            .keys()
            .cloned()
            .collect();
        for member in known {
            let removed = !active.contains(&member.as_str());
            match (removed, pending.contains_key(&member)) {
                (true, false) => {
                    if let Some(timeout) = current.drain_timeout {
                        let stop = CancellationToken::new();
                        pending.insert(member.clone(), stop.clone());
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = tokio::time::sleep(timeout) => {
                                    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                                    if let Some(cut) = s.members.get_mut(&member).and_then(|m| m.cut.take()) {
                                        cut.cancel();
                                    }
                                }
                                _ = stop.cancelled() => {}
                            }
                        });
                    }
                }
                (false, true) => {
                    if let Some(stop) = pending.remove(&member) {
                        stop.cancel();
                    }
                }
                _ => {}
            }
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    fn backend(id: &str, addr: SocketAddr, weight: u32) -> Backend {
        Backend {
            member_id: id.into(),
            addr,
            weight,
            healthy: true,
        }
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

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn removed_members_get_no_new_connections_and_keep_the_old_ones() {
        let (a, b) = (echo_server().await, echo_server().await);
        let (tx, rx) = watch::channel(PoolView {
            backends: vec![backend("a", a, 1), backend("b", b, 1)],
            drain_timeout: None,
        });
        let cancel = CancellationToken::new();
        let lb = Listener::bind("127.0.0.1:0".parse().unwrap(), rx, cancel.clone())
            .await
            .unwrap();
        let mut conns = Vec::new();
        for i in 0..6 {
            let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
            assert_eq!(
                roundtrip(&mut c, &format!("m{i}")).await.unwrap(),
                format!("m{i}")
            );
            conns.push(c);
        }
        assert_eq!((lb.live_connections("a"), lb.live_connections("b")), (3, 3));
        tx.send_replace(PoolView {
            backends: vec![backend("b", b, 1)],
            drain_timeout: None,
        });
        for i in 0..4 {
            let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
            assert_eq!(
                roundtrip(&mut c, &format!("n{i}")).await.unwrap(),
                format!("n{i}")
            );
        }
        assert_eq!(
            lb.accepted("a"),
            3,
            "no new connection to the removed member"
        );
        for c in conns.iter_mut() {
            assert_eq!(
                roundtrip(c, "still").await.unwrap(),
                "still",
                "old connections keep flowing"
            );
        }
        assert_eq!(lb.live_connections("a"), 3);
        drop(conns);
        wait_for(|| lb.live_connections("a") == 0).await;
        cancel.cancel();
    }

    #[tokio::test]
    async fn weights_and_health_steer_new_connections() {
        let (a, b) = (echo_server().await, echo_server().await);
        let mut unhealthy = backend("c", a, 5);
        unhealthy.healthy = false;
        let (_tx, rx) = watch::channel(PoolView {
            backends: vec![
                backend("a", a, 3),
                backend("b", b, 1),
                unhealthy,
                backend("z", b, 0),
            ],
            drain_timeout: None,
        });
        let lb = Listener::bind("127.0.0.1:0".parse().unwrap(), rx, CancellationToken::new())
            .await
            .unwrap();
        for i in 0..8 {
            let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
            roundtrip(&mut c, &format!("{i}")).await.unwrap();
        }
        assert_eq!(
            (
                lb.accepted("a"),
                lb.accepted("b"),
                lb.accepted("c"),
                lb.accepted("z")
            ),
            (6, 2, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_refusing_member_is_skipped_for_the_next() {
        let good = echo_server().await;
        let dead = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap(); // closed at once
        let (_tx, rx) = watch::channel(PoolView {
            backends: vec![backend("dead", dead, 1), backend("good", good, 1)],
            drain_timeout: None,
        });
        let lb = Listener::bind("127.0.0.1:0".parse().unwrap(), rx, CancellationToken::new())
            .await
            .unwrap();
        for i in 0..4 {
            let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
            assert_eq!(
                roundtrip(&mut c, &format!("{i}")).await.unwrap(),
                format!("{i}")
            );
        }
        assert_eq!(lb.accepted("good"), 4);
    }

    #[tokio::test]
    async fn connection_drain_cuts_a_removed_members_connections_after_its_timeout() {
        let a = echo_server().await;
        let (tx, rx) = watch::channel(PoolView {
            backends: vec![backend("a", a, 1)],
            drain_timeout: Some(Duration::from_millis(300)),
        });
        let lb = Listener::bind("127.0.0.1:0".parse().unwrap(), rx, CancellationToken::new())
            .await
            .unwrap();
        let mut c = TcpStream::connect(lb.local_addr()).await.unwrap();
        roundtrip(&mut c, "x").await.unwrap();
        let removed = tokio::time::Instant::now();
        tx.send_replace(PoolView {
            backends: vec![],
            drain_timeout: Some(Duration::from_millis(300)),
        });
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("cut in time")
            .unwrap();
        assert_eq!(n, 0, "a clean close (EOF), not a reset");
        assert!(
            removed.elapsed() >= Duration::from_millis(300),
            "not before the drain timeout"
        );
    }
}
