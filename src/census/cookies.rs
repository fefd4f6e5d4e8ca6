//! Which sockets a census counted, by socket cookie: exactly, in memory that grows far slower than the
//! socket count.
//!
//! The kernel gives a socket its cookie (`idiag_cookie`) the first time anyone asks for it (a sock_diag
//! dump, `SO_COOKIE`, BPF) and never gives the same one twice, and a destroy notification carries it.
//! So "this destroyed socket is one the latest census counted" is "its cookie is in that census' set",
//! with no approximation, and "this counted socket is new since the previous census" is "its cookie is
//! not in the previous set".
//!
//! **Why exact.** The first version kept, per batch of cookies (below), only the largest cookie seen:
//! a handful of entries whatever the socket count. But that also "knew" every socket an earlier census
//! had counted, including those that left ESTABLISHED before the latest census (a half-closed one, a
//! FIN_WAIT2 waiting for its peer, a CLOSE_WAIT until the application closes it), and their destroys
//! then counted down the latest census' count, which had not counted them. Together with the
//! notifications that arrive while a census runs (see [`Horizon`]) this drove the count-down of a
//! 100k drain to zero while thousands of connections were still open (BENCHMARKS.md §3): a confirming
//! census that read them, a second one a census' duration later, the end seen a census or two late.
//!
//! **Why small.** Cookies are handed out in runs: in process context each CPU takes a batch of 4096
//! from a global counter (`gen_cookie_next`, batches `(k*4096, (k+1)*4096]`) and hands them out in
//! order, while other contexts count down from 2^64. A census is the first to ask for most of its
//! sockets' cookies, so it numbers them itself, consecutively within its CPU's batches: its set is a
//! few dense runs. A compressed bitmap ([`roaring`]: 64Ki-wide containers, each an array of 16-bit
//! values or a bitmap of 8 KiB, whichever is smaller) holds 100k such cookies in about 16 to 32 KiB
//! (`a_census_of_100k_sockets_costs_tens_of_kib`), and at most two sets live at once plus the
//! cookies destroyed during one census. Scattered cookies cost 2 bytes each plus a container per 64Ki
//! range: still no allocation per socket beyond that.

use std::sync::{Arc, Mutex};

use roaring::RoaringTreemap;
use tokio::sync::Notify;

/// A set of socket cookies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CookieSet(RoaringTreemap);

impl CookieSet {
    pub fn new() -> CookieSet {
        CookieSet::default()
    }

    /// Adds a cookie; whether it was not in the set yet. A zero is not a cookie (the kernel fills the
    /// field whenever it dumps a socket, so a zero is something else posing as a dump): it is never
    /// stored, and always reported new.
    pub fn insert(&mut self, cookie: u64) -> bool {
        cookie == 0 || self.0.insert(cookie)
    }

    pub fn contains(&self, cookie: u64) -> bool {
        cookie != 0 && self.0.contains(cookie)
    }

    /// How many of this set's cookies are in `other` too.
    pub fn common(&self, other: &CookieSet) -> u64 {
        self.0.intersection_len(&other.0)
    }

    /// How many cookies the set holds.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// About the memory the set holds, in bytes: its containers' values (an array's 16-bit values
    /// without the vector's spare room, a bitmap's 8 KiB, a run's pairs) and their headers.
    pub fn bytes(&self) -> usize {
        // A container's own header (its key, the store's tag and vector) is about 32 bytes; a
        // treemap entry (32 high bits and a bitmap's vector) about 40. (The crate's own statistics
        // count an array's values as 4 bytes and a bitmap as 64 KiB: bits, not bytes.)
        const CONTAINER: usize = 32;
        const TREEMAP_ENTRY: usize = 40;
        const BITMAP: usize = 8 * 1024;
        self.0
            .bitmaps()
            .map(|(_, bitmap)| {
                let s = bitmap.statistics();
                TREEMAP_ENTRY
                    + s.n_containers as usize * CONTAINER
                    + s.n_values_array_containers as usize * 2
                    + s.n_bitset_containers as usize * BITMAP
                    + s.n_bytes_run_containers as usize
            })
            .sum()
    }
}

/// The censuses of one [`super::NetlinkCensus`] as a [`super::DestroyWatch`] on another task sees them:
/// the set of the latest one, its number, and whether the next is under way.
///
/// A socket destroyed while a census runs may or may not be in the set that census will publish
/// (counted if the dump reached it before it left ESTABLISHED), and its notification may be read
/// before that set exists. So the census says when it begins ([`Horizon::begin`], before its dump
/// request) and when it ends ([`Horizon::publish`], or [`Horizon::abandon`] when it failed), and the
/// watch keeps the cookies of sockets destroyed in between until it can look them up in the set
/// published. A socket destroyed before a census began is never in its set (a dump only sees sockets
/// still in the table, and a socket is freed, which is when the kernel notifies, long after it left
/// the table), so each destroy needs looking up only in the set that was latest when it was read, and,
/// if a census was then under way, in that census' set.
#[derive(Debug, Clone, Default)]
pub struct Horizon(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    latest: Mutex<Latest>,
    /// Signalled when a census ends, so the watch looks up the cookies it kept without waiting for
    /// another notification. One watch follows a horizon: a stored permit is never lost.
    ended: Notify,
    /// How many times the watch's task was polled: it runs on the drain's thread, between the
    /// drain's rechecks, which must not take its work for theirs.
    watch_polls: std::sync::atomic::AtomicU64,
}

/// What the censuses of a [`Horizon`] have said so far, read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    /// How many censuses have published their set: the number of the latest one (1 for the first; 0
    /// before any).
    pub number: u64,
    /// The cookies the latest census counted.
    pub set: Option<Arc<CookieSet>>,
    /// A census (it will be number `number + 1`) has begun its dump and not yet published its set.
    pub under_way: bool,
}

impl Horizon {
    fn lock(&self) -> std::sync::MutexGuard<'_, Latest> {
        self.0.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A census begins: call before its dump request is sent.
    pub(crate) fn begin(&self) {
        self.lock().under_way = true;
    }

    /// The census that began ends with the cookies it counted; returns its number.
    pub(crate) fn publish(&self, set: Arc<CookieSet>) -> u64 {
        let number = {
            let mut latest = self.lock();
            latest.number += 1;
            latest.set = Some(set);
            latest.under_way = false;
            latest.number
        };
        self.0.ended.notify_one();
        number
    }

    /// The census that began failed: the latest set stays the latest.
    pub(crate) fn abandon(&self) {
        self.lock().under_way = false;
        self.0.ended.notify_one();
    }

    pub fn latest(&self) -> Latest {
        self.lock().clone()
    }

    /// The number of the latest census (0 before the first).
    pub fn number(&self) -> u64 {
        self.lock().number
    }

    /// The watch's task was polled once more.
    pub(crate) fn watched(&self) {
        self.0
            .watch_polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the task of the watch following this horizon has been polled so far.
    pub fn watch_polls(&self) -> u64 {
        self.0
            .watch_polls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until a census ends (at once if one ended since the last wait).
    pub async fn ended(&self) {
        self.0.ended.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cookies: impl IntoIterator<Item = u64>) -> CookieSet {
        let mut s = CookieSet::new();
        for c in cookies {
            s.insert(c);
        }
        s
    }

    #[test]
    fn membership_is_exact_across_the_kernels_batches() {
        // What was measured here: CPU 1 gave out 16064..16066 (batch 3), CPU 0 then 17811.. (batch
        // 4), then CPU 1 again 16070. The batch rule knew 16067..16069 too (same batch, below its
        // maximum); a socket numbered there was never counted.
        let s = set([16064, 16065, 16066, 17811, 17812, 17813]);
        assert!(s.contains(16065) && s.contains(17811));
        assert!(!s.contains(16067) && !s.contains(16070) && !s.contains(17814));
        assert!(
            !s.contains(17810),
            "below a counted cookie of the same batch"
        );
    }

    #[test]
    fn the_kernels_count_down_range_is_just_more_cookies() {
        let s = set([u64::MAX - 10, u64::MAX - 3]);
        assert!(s.contains(u64::MAX - 3) && s.contains(u64::MAX - 10));
        assert!(!s.contains(u64::MAX - 4) && !s.contains(u64::MAX - 11));
    }

    #[test]
    fn insert_says_whether_a_socket_was_new_and_zero_is_not_a_cookie() {
        let mut s = CookieSet::new();
        assert!(s.insert(7));
        assert!(
            !s.insert(7),
            "a dump that reports a socket twice counts it once"
        );
        assert!(
            s.insert(0) && s.insert(0),
            "a zero cannot be told apart: always new"
        );
        assert!(!s.contains(0));
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn common_counts_the_cookies_of_one_set_in_another() {
        let destroyed = set([3, 5, 9, 1 << 40]);
        let counted = set([1, 3, 5, 1 << 40]);
        assert_eq!(destroyed.common(&counted), 3);
        assert_eq!(counted.common(&CookieSet::new()), 0);
    }

    /// 100k sockets numbered by one census, as the kernel hands cookies out: runs of 4096 on the
    /// census' CPU, with the batches another CPU took in between (half of them, here) unused.
    #[test]
    fn a_census_of_100k_sockets_costs_tens_of_kib() {
        let mut s = CookieSet::new();
        let mut batch = 1000u64; // the counter is well under way
        let mut left = 100_000u64;
        while left > 0 {
            let n = left.min(4096);
            for c in batch * 4096 + 1..=batch * 4096 + n {
                s.insert(c);
            }
            left -= n;
            batch += 2;
        }
        assert_eq!(s.len(), 100_000);
        let kib = s.bytes() as f64 / 1024.0;
        assert!(kib < 40.0, "{kib:.1} KiB");
        // The same 100k sockets with every other cookie taken by someone else: twice the span.
        let sparse = set((0..100_000u64).map(|i| 4_096_000 + 2 * i));
        let kib = sparse.bytes() as f64 / 1024.0;
        assert!(kib < 40.0, "{kib:.1} KiB");
    }

    #[test]
    fn the_horizon_numbers_its_censuses_and_says_one_is_under_way() {
        let h = Horizon::default();
        let l = h.latest();
        assert!(l.set.is_none() && l.number == 0 && !l.under_way);
        h.begin();
        assert!(h.latest().under_way);
        assert_eq!(h.clone().publish(Arc::new(set([7]))), 1);
        let l = h.latest();
        assert!(!l.under_way && l.number == 1 && l.set.is_some_and(|s| s.contains(7)));
        h.begin();
        h.abandon();
        let l = h.latest();
        assert!(
            !l.under_way && l.number == 1,
            "a failed census publishes nothing"
        );
    }

    #[tokio::test]
    async fn the_end_of_a_census_wakes_its_watcher_even_if_it_was_not_waiting_yet() {
        let h = Horizon::default();
        h.begin();
        h.publish(Arc::new(set([1])));
        tokio::time::timeout(std::time::Duration::from_secs(5), h.ended())
            .await
            .expect("the permit was kept");
    }
}
