//! Health checks: a real TCP connect to each member of a pool that has a health monitor, at the
//! scenario's interval. Only loopback members are probed (elb-sim never sends a packet elsewhere); any
//! other address shows OFFLINE. Members answer ONLINE or OFFLINE; pools without a monitor show NO_MONITOR.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// A TCP connect health check.
pub async fn probe(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let (interval, targets) = {
            let inner = shared.lock();
            let targets: Vec<(String, SocketAddr)> = inner
                .members
                .iter()
                .filter(|m| inner.pool(&m.pool_id).is_some_and(|p| p.health_monitor))
                .filter_map(|m| Some((m.id.clone(), m.addr()?)))
                .collect();
            (inner.settings.health_interval, targets)
        };
        let timeout = interval.min(Duration::from_secs(1));
        // elb-sim only ever talks to loopback: a member elsewhere is reported OFFLINE, never probed.
        let results = join_all(targets.iter().map(|(_, addr)| async move {
            addr.ip().is_loopback() && probe(*addr, timeout).await
        }))
        .await;
        {
            let mut inner = shared.lock();
            let mut changed = false;
            for ((id, _), up) in targets.iter().zip(results) {
                if let Some(m) = inner.members.iter_mut().find(|m| m.id == *id) {
                    let status = if up { "ONLINE" } else { "OFFLINE" };
                    if m.operating_status != status {
                        m.operating_status = status.into();
                        changed = true;
                    }
                }
            }
            if changed {
                inner.publish();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[tokio::test]
    async fn probe_tells_listening_from_closed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        assert!(probe(addr, Duration::from_secs(1)).await);
        drop(l);
        let started = Instant::now();
        assert!(!probe(addr, Duration::from_secs(5)).await);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a refusal is an answer: no need to wait for the timeout"
        );
    }

    #[tokio::test]
    async fn probe_gives_up_at_its_timeout_when_nothing_answers() {
        // A listener whose accept queue is full: Linux drops further SYNs, so connects hang, the
        // way they do to a frozen server.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let _full = socket.listen(0).unwrap();
        let mut held = Vec::new();
        let hanging = 'fill: {
            for _ in 0..16 {
                match tokio::time::timeout(
                    Duration::from_millis(300),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(c)) => held.push(c),
                    Ok(Err(e)) => panic!("connect to a full queue failed: {e}"),
                    Err(_) => break 'fill true,
                }
            }
            false
        };
        assert!(hanging, "the accept queue never filled");
        let timeout = Duration::from_millis(300);
        let started = Instant::now();
        assert!(!probe(addr, timeout).await);
        let took = started.elapsed();
        assert!(
            took >= timeout && took < timeout * 3,
            "gave up after {took:?}"
        );
    }
}
