//! Which sockets a census has seen, by socket cookie, in memory that does not grow with the socket count.
//!
//! The kernel gives a socket its cookie (`idiag_cookie`) the first time anyone asks for it (a sock_diag
//! dump, `SO_COOKIE`, BPF), so "cookie given out after the previous census" means "socket new since
//! then". But the cookies are not one global sequence: in process context each CPU takes a batch of
//! 4096 from a global counter (`gen_cookie_next`, batches `(k*4096, (k+1)*4096]`) and hands them out in
//! order, while other contexts count down from 2^64. Measured here with the census pinned to alternating
//! CPUs: a socket first dumped on CPU 0 got cookie 17811 after CPU 1 had given out 16066, so the
//! obvious "cookie > previous maximum" misses new sockets.
//!
//! So the set keeps, per 4096-batch, the largest cookie it saw (and the smallest one of the count-down
//! range): within one batch, order is time order. A cookie is known if its batch was seen and it is not
//! above that batch's maximum; an unseen batch means a new socket, because a socket that existed and was
//! counted would have put its batch in the set. Memory is one entry per batch touched: about
//! sockets/4096 at scale, a handful in practice. If a kernel ever batched by fewer than 4096 the rule
//! could call a new socket old; by more, it stays exact.

use std::sync::{Arc, Mutex};

const BATCH_SHIFT: u32 = 12;
/// Cookies from this value up come from the kernel's count-down (non-task context) range.
const REVERSE: u64 = 1 << 63;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CookieSet {
    /// (batch, largest cookie seen in it), sorted by batch.
    batches: Vec<(u64, u64)>,
    /// The smallest cookie seen from the count-down range (there later means smaller).
    reverse_min: Option<u64>,
    /// Index of the last batch touched: consecutive sockets often share one.
    last: usize,
}

fn batch(cookie: u64) -> u64 {
    (cookie - 1) >> BATCH_SHIFT
}

impl CookieSet {
    pub fn clear(&mut self) {
        self.batches.clear();
        self.reverse_min = None;
        self.last = 0;
    }

    pub fn insert(&mut self, cookie: u64) {
        if cookie == 0 {
            return; // never given out: the kernel fills the field, a zero is not a cookie
        }
        if cookie >= REVERSE {
            self.reverse_min = Some(self.reverse_min.map_or(cookie, |m| m.min(cookie)));
            return;
        }
        let b = batch(cookie);
        if let Some(entry) = self.batches.get_mut(self.last)
            && entry.0 == b
        {
            entry.1 = entry.1.max(cookie);
            return;
        }
        match self.batches.binary_search_by_key(&b, |e| e.0) {
            Ok(i) => {
                self.batches[i].1 = self.batches[i].1.max(cookie);
                self.last = i;
            }
            Err(i) => {
                self.batches.insert(i, (b, cookie));
                self.last = i;
            }
        }
    }

    /// Whether a socket with this cookie already had it when the set was taken (it is not new).
    pub fn knew(&self, cookie: u64) -> bool {
        if cookie == 0 {
            return false;
        }
        if cookie >= REVERSE {
            return self.reverse_min.is_some_and(|m| cookie >= m);
        }
        let b = batch(cookie);
        match self.batches.binary_search_by_key(&b, |e| e.0) {
            Ok(i) => cookie <= self.batches[i].1,
            Err(_) => false,
        }
    }

    /// How many entries the set holds (its memory, in units of 16 bytes).
    pub fn len(&self) -> usize {
        self.batches.len() + usize::from(self.reverse_min.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cookie set of the latest census, shared with a [`super::DestroyWatch`] on another task.
#[derive(Debug, Clone, Default)]
pub struct Horizon(Arc<Mutex<Option<Arc<CookieSet>>>>);

impl Horizon {
    pub(crate) fn publish(&self, set: &CookieSet) {
        let set = Arc::new(set.clone());
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(set);
    }

    /// The latest census' set, `None` before the first census.
    pub fn latest(&self) -> Option<Arc<CookieSet>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(cookies: &[u64]) -> CookieSet {
        let mut s = CookieSet::default();
        for &c in cookies {
            s.insert(c);
        }
        s
    }

    #[test]
    fn a_later_cookie_of_another_cpus_batch_is_new_even_below_the_maximum() {
        // What was measured: CPU 1 gave out 16064..16066 (batch 3), CPU 0 then 17811.. (batch 4),
        // then CPU 1 again 16070: below the maximum 17813, but new.
        let s = set(&[16064, 16065, 16066, 17811, 17812, 17813]);
        assert!(!s.knew(16070));
        assert!(s.knew(16065) && s.knew(17811));
        assert!(!s.knew(17814));
    }

    #[test]
    fn an_unseen_batch_is_new() {
        let s = set(&[5000, 5001]);
        assert!(
            !s.knew(100),
            "batch 0 was never seen: whatever is in it is new to this census"
        );
        assert!(!s.knew(9000));
    }

    #[test]
    fn batches_are_aligned_the_way_the_kernel_hands_them_out() {
        // The kernel's batches are (0, 4096], (4096, 8192], ...: 4096 and 4097 are different CPUs'.
        let s = set(&[4096]);
        assert!(!s.knew(4097));
        assert!(s.knew(4095));
        let s = set(&[4097]);
        assert!(!s.knew(4098) && !s.knew(4096));
    }

    #[test]
    fn the_count_down_range_is_ordered_the_other_way() {
        let s = set(&[u64::MAX - 10]);
        assert!(s.knew(u64::MAX - 3), "handed out earlier");
        assert!(!s.knew(u64::MAX - 11), "handed out later");
    }

    #[test]
    fn zero_is_not_a_cookie_and_memory_is_per_batch() {
        let mut s = set(&[0]);
        assert!(s.is_empty() && !s.knew(0));
        for c in 1..=100_000u64 {
            s.insert(c);
        }
        assert_eq!(s.len(), 25, "100k consecutive cookies span 25 batches");
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn the_horizon_shares_the_latest_set() {
        let h = Horizon::default();
        assert!(h.latest().is_none());
        h.clone().publish(&set(&[7]));
        assert!(h.latest().is_some_and(|s| s.knew(7)));
    }
}
