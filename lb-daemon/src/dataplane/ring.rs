//! Rings for the IPVS-compatible schedulers `rr`, `wrr` and `sh`.
//!
//! The XDP program cannot run IPVS's stateful schedulers, so user space
//! precomputes each service's choices as a ring of backends and the kernel
//! only indexes it: with a per-CPU counter modulo the ring length for `rr`
//! and `wrr`, with a hash of the source address (optionally the port) modulo
//! the ring length for `sh`. (`mh` uses [`super::maglev`].)
//!
//! Every function here is pure: it takes the backends' weights in the
//! caller's order and returns a ring of **indices into that slice**, so the
//! caller maps indices to whatever it writes into the BPF array. Weight 0
//! means "draining" (quiesced, in IPVS terms): such a backend never appears
//! in a ring. No backend with a positive weight gives an empty ring.
//!
//! The caller's order matters, as the order of `svc->destinations` does in
//! IPVS; pass backends in a stable order (for instance configuration order)
//! so that rings do not reshuffle needlessly on reload.

use thiserror::Error;

/// Number of buckets in a source-hash table: `IP_VS_SH_TAB_SIZE`
/// (`1 << CONFIG_IP_VS_SH_TAB_BITS`, whose default is 8), net/netfilter/ipvs/ip_vs_sh.c.
pub const SH_TAB_SIZE: usize = 256;

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    /// Every backend with a positive weight needs at least one entry.
    #[error("ring limit {max_len} is smaller than the number of backends with a positive weight ({backends})")]
    TooManyBackends {
        /// Backends with a positive weight.
        backends: usize,
        /// The requested maximum ring length.
        max_len: usize,
    },
}

/// Round robin: every backend with a positive weight once, in input order.
///
/// IPVS's `rr` (ip_vs_rr.c) walks the destination list skipping weight-0
/// ones; a counter over this ring does the same.
pub fn rr(weights: &[u32]) -> Vec<usize> {
    weights
        .iter()
        .enumerate()
        .filter(|&(_, &w)| w > 0)
        .map(|(i, _)| i)
        .collect()
}

/// Interleaved weighted round robin, one full cycle of IPVS's `wrr` scheduler,
/// at most `max_len` entries long.
///
/// ip_vs_wrr.c (`ip_vs_wrr_schedule`) keeps a current weight `cw`, starting at
/// the maximum weight; each pass over the destination list picks, in list
/// order, every destination whose weight is `>= cw`, then lowers `cw` by the
/// gcd of the positive weights, and starts again from the maximum after
/// `cw` reaches 0. (IPVS stores `mw = max - (gcd - 1)` and compares against
/// that; as every weight is a multiple of the gcd, the comparisons give the
/// same answers as the thresholds `max, max - gcd, ..., gcd` used here.)
/// For weights `(5, 1, 1)` the cycle is `0 0 0 0 0 1 2`; it has
/// `sum(w) / gcd` entries and backend `i` appears `w_i / gcd` times. The ring
/// starts where a new IPVS service starts (`ip_vs_wrr_init_svc` sets `cw` to
/// the maximum); the kernel's per-CPU counters make the start moot anyway.
///
/// **Scaling.** If `sum(w) / gcd > max_len` the cycle would not fit, so the
/// positive weights are scaled down proportionally first:
/// `w'_i = max(1, round(w_i * t / sum(w)))`, with `t` the largest integer for
/// which `sum(w') <= max_len` (found by binary search; `sum(w')` grows with
/// `t`). Every positive weight stays >= 1, so no backend disappears; shares
/// deviate from the exact ratios by at most about one entry per backend (the
/// rounding), plus the clamp to 1 for backends whose share is below
/// `1 / max_len`. The scaled weights then go through the algorithm above
/// (including their own gcd), so the ring has at most `max_len` entries.
///
/// Errors if more backends have a positive weight than `max_len` allows.
pub fn wrr(weights: &[u32], max_len: usize) -> Result<Vec<usize>, RingError> {
    let backends = weights.iter().filter(|&&w| w > 0).count();
    if backends == 0 {
        return Ok(Vec::new());
    }
    if backends > max_len {
        return Err(RingError::TooManyBackends { backends, max_len });
    }

    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w));
    let cycle: u64 = weights.iter().map(|&w| u64::from(w / g)).sum();
    let weights = if cycle > max_len as u64 {
        scale_weights(weights, max_len)
    } else {
        weights.to_vec()
    };
    Ok(wrr_cycle(&weights))
}

/// One IPVS wrr cycle for weights that are known to fit (see [`wrr`]).
fn wrr_cycle(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w));
    if g == 0 {
        return Vec::new();
    }
    let max = weights.iter().copied().max().unwrap_or(0);
    let len: u64 = weights.iter().map(|&w| u64::from(w / g)).sum();
    let mut ring = Vec::with_capacity(len as usize);
    // Thresholds max, max - g, ..., g; max is a multiple of g.
    for pass in (1..=max / g).rev() {
        let cw = pass * g;
        ring.extend(
            weights
                .iter()
                .enumerate()
                .filter(|&(_, &w)| w >= cw)
                .map(|(i, _)| i),
        );
    }
    ring
}

/// Proportional down-scaling for [`wrr`]: the largest `t` such that
/// `sum(max(1, round(w * t / S))) <= max_len`, applied to positive weights.
/// Requires `1 <= #positive weights <= max_len`, which makes `t = 0` valid.
fn scale_weights(weights: &[u32], max_len: usize) -> Vec<u32> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    // u128: w * t needs up to 32 + 64 bits.
    let scaled = |w: u32, t: u128| -> u128 {
        if w == 0 {
            0
        } else {
            ((u128::from(w) * t + total / 2) / total).max(1)
        }
    };
    let fits = |t: u128| weights.iter().map(|&w| scaled(w, t)).sum::<u128>() <= max_len as u128;

    // Binary search with the invariant fits(lo) && !fits(hi). fits(0): every
    // positive weight becomes 1 and there are at most max_len of them.
    // !fits(total): t = total gives back the original weights, which are
    // longer than max_len (that is why we are scaling). !fits(2 * max_len + 1):
    // rounding loses at most 1/2 per weight, so sum(w') >= t - n/2 > max_len.
    let (mut lo, mut hi) = (0u128, (2 * max_len as u128 + 1).min(total));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Each scaled weight is <= max_len, so it fits in u32 whenever max_len
    // does; saturate for absurd max_len values on 64-bit hosts.
    weights
        .iter()
        .map(|&w| u32::try_from(scaled(w, lo)).unwrap_or(u32::MAX))
        .collect()
}

/// IPVS source-hash table: [`SH_TAB_SIZE`] buckets, each the index of a
/// backend; empty if no backend has a positive weight.
///
/// As `ip_vs_sh_reassign` (ip_vs_sh.c) does, buckets are filled in order,
/// walking the backends round robin, and a backend keeps receiving
/// consecutive buckets until it has taken `weight` of them in this turn. With
/// weights `(1, 2, 3)` the buckets start `0 1 1 2 2 2 0 1 1 ...`.
///
/// Two consequences of that IPVS behaviour, kept for compatibility:
/// * shares only follow weights while `sum(w)` is well below 256; a backend
///   whose weight is >= 256 takes every remaining bucket of its first turn,
///   so use small weights with `sh` (as with IPVS);
/// * with more than 256 backends, the later ones get no bucket.
///
/// One deliberate difference: IPVS also gives weight-0 destinations a bucket
/// per turn (and then either drops the packet or, with `sh-fallback`, picks
/// another destination); here weight-0 backends are skipped when filling, so
/// their share goes to the others.
pub fn sh(weights: &[u32]) -> Vec<usize> {
    let active = rr(weights);
    if active.is_empty() {
        return Vec::new();
    }
    let mut table = Vec::with_capacity(SH_TAB_SIZE);
    'fill: for &i in active.iter().cycle() {
        // Weights beyond the table size change nothing: clamp to avoid a
        // needlessly long loop.
        for _ in 0..(weights[i] as usize).min(SH_TAB_SIZE) {
            if table.len() == SH_TAB_SIZE {
                break 'fill;
            }
            table.push(i);
        }
    }
    table
}

/// Greatest common divisor (Euclid); `gcd(0, x) == x`, so folding from 0
/// ignores weight-0 entries, as `ip_vs_wrr_gcd_weight` does.
fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Occurrences of each index in a ring.
    fn counts(ring: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in ring {
            c[i] += 1;
        }
        c
    }

    /// A literal transliteration of `ip_vs_wrr_schedule` and
    /// `ip_vs_wrr_init_svc` (ip_vs_wrr.c), state and all, to check
    /// [`wrr_cycle`] against: `cl` is the list cursor (`None` is the list
    /// head), `cw` the current weight, `mw = max - (di - 1)`, `di` the gcd.
    struct IpvsWrr<'a> {
        weights: &'a [u32],
        cl: Option<usize>,
        cw: i64,
        mw: i64,
        di: i64,
    }

    impl<'a> IpvsWrr<'a> {
        fn new(weights: &'a [u32]) -> Self {
            let g = weights.iter().fold(0, |g, &w| gcd(g, w));
            let di = i64::from(if g == 0 { 1 } else { g });
            let max = i64::from(weights.iter().copied().max().unwrap_or(0));
            let mw = max - (di - 1);
            IpvsWrr {
                weights,
                cl: None,
                cw: mw,
                mw,
                di,
            }
        }

        fn schedule(&mut self) -> Option<usize> {
            if self.mw <= 0 {
                return None;
            }
            // IPVS's `last`/`stop` bookkeeping only ends the search when
            // every destination is overloaded; without overload flags and
            // with mw > 0 (some weight >= gcd) a destination is always found.
            let n = self.weights.len();
            let mut dest = self.cl;
            loop {
                // list_for_each_entry_continue: entries after `dest`.
                let mut next = dest.map_or(0, |d| d + 1);
                while next < n {
                    if i64::from(self.weights[next]) >= self.cw {
                        self.cl = Some(next);
                        return Some(next);
                    }
                    next += 1;
                }
                self.cw -= self.di;
                if self.cw <= 0 {
                    self.cw = self.mw;
                }
                dest = None; // start from the head
            }
        }
    }

    /// SplitMix64 for reproducible random weights.
    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn rr_keeps_order_and_skips_weight_zero() {
        assert_eq!(rr(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(rr(&[3, 0, 7, 0, 1]), [0, 2, 4]);
        assert!(rr(&[]).is_empty());
        assert!(rr(&[0, 0]).is_empty());
    }

    #[test]
    fn wrr_matches_ipvs_by_hand() {
        // ip_vs_wrr with A=5, B=1, C=1: cw = 5, 4, 3, 2 pick A only; cw = 1
        // picks A, B, C.
        assert_eq!(wrr(&[5, 1, 1], 1000).unwrap(), [0, 0, 0, 0, 0, 1, 2]);
        // gcd 2: thresholds 6, 4, 2 (IPVS: mw = 5, cw = 5, 3, 1).
        assert_eq!(wrr(&[4, 2, 6], 1000).unwrap(), [2, 0, 2, 0, 1, 2]);
        // Equal weights reduce to rr; weight 0 never appears.
        assert_eq!(wrr(&[7, 0, 7, 7], 1000).unwrap(), [0, 2, 3]);
        assert_eq!(wrr(&[0, 3, 0], 1000).unwrap(), [1]);
    }

    #[test]
    fn wrr_matches_ipvs_simulation() {
        let mut seed = 0x1234_5678;
        for case in 0..300 {
            let n = (splitmix(&mut seed) % 8 + 1) as usize;
            let weights: Vec<u32> = (0..n)
                .map(|_| match splitmix(&mut seed) % 4 {
                    0 => 0,
                    1 => (splitmix(&mut seed) % 4) as u32 * 3,
                    _ => (splitmix(&mut seed) % 20) as u32,
                })
                .collect();
            let ring = wrr(&weights, 10_000).unwrap();
            let mut ipvs = IpvsWrr::new(&weights);
            // Two full cycles: the second checks the wrap-around too.
            let expected: Vec<usize> = (0..2 * ring.len()).map_while(|_| ipvs.schedule()).collect();
            let twice: Vec<usize> = ring.iter().chain(&ring).copied().collect();
            assert_eq!(twice, expected, "case {case}: weights {weights:?}");
            if ring.is_empty() {
                assert_eq!(IpvsWrr::new(&weights).schedule(), None);
            }
        }
    }

    #[test]
    fn wrr_counts_follow_weights() {
        let weights = [10, 0, 30, 20, 5];
        let ring = wrr(&weights, 1000).unwrap();
        // gcd 5: cycle = 2 + 6 + 4 + 1 = 13.
        assert_eq!(ring.len(), 13);
        assert_eq!(counts(&ring, weights.len()), [2, 0, 6, 4, 1]);
    }

    #[test]
    fn wrr_scales_down_when_too_long() {
        // Cycle would be 1000 + 500 + 1 = 1501 entries.
        let weights = [1000, 500, 1, 0];
        let ring = wrr(&weights, 100).unwrap();
        assert!(ring.len() <= 100);
        let c = counts(&ring, weights.len());
        assert_eq!(c[3], 0);
        assert!(c[2] >= 1, "small weights are kept alive: {c:?}");
        // 2:1 ratio kept within one entry.
        assert!(c[0].abs_diff(2 * c[1]) <= 2, "{c:?}");
        assert!(c[0] + c[1] + c[2] >= 95, "uses most of the room: {c:?}");

        // Prime weights (gcd 1) of u32 size: sum far beyond any ring.
        let weights = [u32::MAX, u32::MAX - 2, 7];
        let ring = wrr(&weights, 4096).unwrap();
        assert!(ring.len() <= 4096);
        let c = counts(&ring, 3);
        assert!(c[0].abs_diff(c[1]) <= 1 && c[2] == 1, "{c:?}");

        // Exactly at the limit: no scaling.
        assert_eq!(wrr(&[5, 1, 1], 7).unwrap(), [0, 0, 0, 0, 0, 1, 2]);
        // One below: scaled, still interleaved IPVS-style.
        let ring = wrr(&[5, 1, 1], 6).unwrap();
        assert!(ring.len() <= 6);
        assert_eq!(counts(&ring, 3)[1..], [1, 1]);

        // Sweep: always fits, every positive weight present.
        let mut seed = 99;
        for max_len in [3usize, 10, 64, 257, 1000] {
            for _ in 0..50 {
                let weights: Vec<u32> = (0..3)
                    .map(|_| (splitmix(&mut seed) % 100_000) as u32 + 1)
                    .collect();
                let ring = wrr(&weights, max_len).unwrap();
                assert!(ring.len() <= max_len, "{weights:?} {max_len}");
                assert!(counts(&ring, 3).iter().all(|&c| c >= 1));
            }
        }
    }

    #[test]
    fn wrr_errors_and_empty() {
        assert_eq!(
            wrr(&[1, 2, 3], 2),
            Err(RingError::TooManyBackends {
                backends: 3,
                max_len: 2
            })
        );
        assert_eq!(wrr(&[1, 0, 0], 1).unwrap(), [0]);
        assert!(wrr(&[], 10).unwrap().is_empty());
        assert!(wrr(&[0, 0], 10).unwrap().is_empty());
        assert!(wrr(&[0, 0], 0).unwrap().is_empty());
    }

    #[test]
    fn sh_fills_like_ip_vs_sh_reassign() {
        let t = sh(&[1, 2, 3]);
        assert_eq!(t.len(), SH_TAB_SIZE);
        assert_eq!(t[..12], [0, 1, 1, 2, 2, 2, 0, 1, 1, 2, 2, 2]);
        // 256 = 42 * 6 + 4: 42 full turns, then 0 1 1 2.
        assert_eq!(counts(&t, 3), [43, 86, 127]);

        // Weight 0 is skipped, not given a bucket per turn.
        let t = sh(&[2, 0, 2]);
        assert_eq!(t[..6], [0, 0, 2, 2, 0, 0]);
        assert_eq!(counts(&t, 3), [128, 0, 128]);

        // Equal weights: plain round robin over buckets.
        let t = sh(&[1; 5]);
        assert!(t.iter().enumerate().all(|(b, &i)| i == b % 5));
    }

    #[test]
    fn sh_counts_follow_weights() {
        let weights = [4, 1, 0, 3, 8];
        let t = sh(&weights);
        let c = counts(&t, weights.len());
        let total: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let want = SH_TAB_SIZE as f64 * f64::from(w) / f64::from(total);
            // A partial last turn shifts each count by less than its weight.
            assert!((c[i] as f64 - want).abs() <= f64::from(w), "{i}: {c:?}");
        }
    }

    #[test]
    fn sh_ipvs_quirks() {
        // A weight >= 256 takes the whole table in its first turn, as in IPVS.
        assert!(sh(&[300, 1]).iter().all(|&i| i == 0));
        assert!(sh(&[u32::MAX, 1]).iter().all(|&i| i == 0));
        // More backends than buckets: the first 256 get one each.
        let t = sh(&[1; 300]);
        assert_eq!(t, (0..SH_TAB_SIZE).collect::<Vec<_>>());
    }

    #[test]
    fn sh_empty() {
        assert!(sh(&[]).is_empty());
        assert!(sh(&[0, 0, 0]).is_empty());
    }

    #[test]
    fn gcd_basics() {
        assert_eq!(gcd(0, 0), 0);
        assert_eq!(gcd(0, 6), 6);
        assert_eq!(gcd(12, 18), 6);
        assert_eq!(gcd(7, 1), 1);
    }
}
