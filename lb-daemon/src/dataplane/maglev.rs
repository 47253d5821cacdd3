//! Weighted Maglev lookup-table builder (the `mh` scheduler).
//!
//! Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016, section 3.4 "Consistent Hashing") gives every backend
//! a pseudo-random permutation of the `M` table slots, derived from an
//! `offset` and a `skip` (section 3.4, "Pseudocode 1").
//! Backends then take turns claiming their next still-free preferred slot until
//! the table is full. The result spreads slots almost perfectly evenly and,
//! when a backend leaves, moves little more than that backend's own slots.
//!
//! The XDP program indexes the table with a hash of the packet's source address
//! (optionally the port) modulo `M`, so every load-balancer node must compute the
//! very same table for the same backend set, otherwise a flow moving between
//! nodes (ECMP rehash, node failure) would change backend. Hence:
//!
//! * the input is sorted into a canonical order first (input order is irrelevant);
//! * `offset` and `skip` come from a hash spelled out below with fixed constants,
//!   not `std`'s `DefaultHasher`, whose output may change between Rust releases;
//! * the identity hashed is the real server's `SocketAddr` (address and port),
//!   which is the same on every node, not a node-local id.
//!
//! # Weights
//!
//! Weighted turns follow Katran's `MaglevHashV2` (facebookincubator/katran,
//! `katran/lib/MaglevHashV2.cpp`): in every round each backend adds its weight
//! to a credit, and claims one slot when the credit reaches the maximum weight
//! (then pays the maximum weight back). The heaviest backend claims a slot every
//! round and a backend of weight `w` claims `w / max_w` slots per round on
//! average, so slot shares follow weights. With equal weights every backend
//! claims a slot every round, in canonical order, which is exactly the classic
//! algorithm: each backend gets `floor(M/N)` or `ceil(M/N)` slots.
//!
//! A backend whose share `w / sum(w)` is far below `1/M` may end up with no slot
//! at all; it still appears in [`MaglevTable::backends`].
//!
//! Weight-0 backends are left out entirely (they are draining: existing flows
//! keep them through the connection table, new flows must not pick them).
//!
//! # The hash (normative: another implementation must reproduce it bit for bit)
//!
//! 1. Canonical bytes of a backend `SocketAddr` (flow info and scope id of IPv6
//!    addresses are ignored):
//!    * IPv4 `a.b.c.d:p`: 7 bytes `[4, a, b, c, d, p >> 8, p & 0xff]`;
//!    * IPv6 `[o0..o15]:p`: 19 bytes `[6, o0, ..., o15, p >> 8, p & 0xff]`
//!      (an IPv4-mapped IPv6 address is an IPv6 address here, distinct from
//!      the IPv4 one).
//! 2. `h` = 64-bit FNV-1a over those bytes: start with
//!    `h = 0xcbf2_9ce4_8422_2325`; for each byte `b`: `h ^= b; h = h * 0x100_0000_01b3`
//!    (wrapping, modulo 2^64).
//! 3. `fmix64(x)` is MurmurHash3's 64-bit finalizer: `x ^= x >> 33;
//!    x *= 0xff51_afd7_ed55_8ccd; x ^= x >> 33; x *= 0xc4ce_b9fe_1a85_ec53;
//!    x ^= x >> 33` (wrapping multiplications).
//! 4. `offset = fmix64(h ^ 0x6d61_676c_6576_6f66) % M` and
//!    `skip = fmix64(h ^ 0x6d61_676c_6576_736b) % (M - 1) + 1`
//!    (the constants are ASCII "maglevof" and "maglevsk"). `skip` is in
//!    `1..M`, and since `M` is prime, `offset + j * skip (mod M)` for
//!    `j = 0..M` visits every slot exactly once.
//!
//! # Canonical order
//!
//! Backends are sorted by their canonical bytes compared lexicographically:
//! all IPv4 backends first (by address octets, then port), then all IPv6 ones.
//! Turns are taken in that order and [`MaglevTable::slots`] holds indices into
//! [`MaglevTable::backends`], which is in that order too.

use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::model::is_prime;

/// Default table size: the smaller of the two primes the Maglev paper evaluates
/// (section 5.3: 65537 and 655373). Large enough that slot shares are within about 0.2% of each
/// other with 100 backends, small enough to build in about a millisecond.
pub const DEFAULT_M: u32 = 65537;

/// One real server as seen by the Maglev builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Stable identity, identical on every node: the real server's address and port.
    pub addr: SocketAddr,
    /// Relative weight; 0 means draining and excludes the backend from the table.
    pub weight: u32,
}

/// A built lookup table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Backends with a non-zero weight, in canonical order (see the module docs).
    pub backends: Vec<SocketAddr>,
    /// `M` entries, each an index into [`Self::backends`]; empty when there is
    /// no backend with a non-zero weight.
    pub slots: Vec<u32>,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// `M` must be prime so that every `skip` in `1..M` generates a full permutation.
    #[error("Maglev table size {0} is not prime")]
    NotPrime(u32),
    /// Every backend needs at least one slot to be reachable.
    #[error("Maglev table size {m} is smaller than the number of backends ({backends})")]
    TableTooSmall {
        /// The requested table size.
        m: u32,
        /// Backends with a non-zero weight.
        backends: usize,
    },
    /// Two backends with non-zero weight share an address and port: they would
    /// get the same permutation and the set has no well-defined canonical order.
    #[error("backend {0} is listed more than once")]
    DuplicateBackend(SocketAddr),
}

impl MaglevTable {
    /// The backend a flow hash selects, as the XDP program does
    /// (`slots[hash % M]`); `None` for an empty table.
    pub fn lookup(&self, hash: u32) -> Option<SocketAddr> {
        let len = self.slots.len();
        if len == 0 {
            return None;
        }
        let slot = self.slots[hash as usize % len];
        Some(self.backends[slot as usize])
    }

    /// Translates the table into caller ids (for instance backend slots in a
    /// BPF map): `id_of` is called once per backend, then every table entry is
    /// replaced by its backend's id.
    pub fn translate<T: Copy>(&self, id_of: impl FnMut(&SocketAddr) -> T) -> Vec<T> {
        let ids: Vec<T> = self.backends.iter().map(id_of).collect();
        self.slots.iter().map(|&i| ids[i as usize]).collect()
    }
}

/// Longest canonical encoding: family byte, 16 IPv6 octets, 2 port bytes.
const MAX_KEY_LEN: usize = 19;

/// Canonical bytes of a backend identity (module docs, "The hash", step 1),
/// kept inline to avoid an allocation per backend.
#[derive(Debug, Clone, Copy)]
struct CanonicalKey {
    buf: [u8; MAX_KEY_LEN],
    len: usize,
}

impl CanonicalKey {
    fn of(addr: &SocketAddr) -> Self {
        let mut buf = [0u8; MAX_KEY_LEN];
        let port = addr.port().to_be_bytes();
        let len = match addr.ip() {
            IpAddr::V4(ip) => {
                buf[0] = 4;
                buf[1..5].copy_from_slice(&ip.octets());
                buf[5..7].copy_from_slice(&port);
                7
            }
            IpAddr::V6(ip) => {
                buf[0] = 6;
                buf[1..17].copy_from_slice(&ip.octets());
                buf[17..19].copy_from_slice(&port);
                19
            }
        };
        CanonicalKey { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

const FNV64_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
/// ASCII "maglevof": separates the offset hash from the skip hash.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66;
/// ASCII "maglevsk".
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b;

/// 64-bit FNV-1a (module docs, step 2).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV64_PRIME)
    })
}

/// MurmurHash3 `fmix64` (module docs, step 3). FNV-1a alone mixes its low bits
/// poorly; the finalizer makes every output bit depend on every input bit.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// `(offset, skip)` of a backend's permutation for table size `m` (module
/// docs, step 4). `m` must be prime (hence >= 2).
fn offset_skip(canonical: &[u8], m: u32) -> (u32, u32) {
    let h = fnv1a64(canonical);
    let m = u64::from(m);
    let offset = fmix64(h ^ OFFSET_SEED) % m;
    let skip = fmix64(h ^ SKIP_SEED) % (m - 1) + 1;
    // Both are < m <= u32::MAX.
    (offset as u32, skip as u32)
}

/// Marks a table entry nobody has claimed yet.
const EMPTY: u32 = u32::MAX;

/// Builds the weighted Maglev table of size `m` for `backends`.
///
/// Input order does not matter; weight-0 backends are ignored. Errors if `m`
/// is not prime, if `m` is smaller than the number of backends with a
/// non-zero weight, or if such a backend is listed twice. No backend with a
/// non-zero weight gives an empty table (`Ok`).
///
/// Cost: `O(M log M)` expected probes plus `O(rounds * N)` credit updates,
/// where `rounds ≈ M * max_w / sum_w`; that is `O(M)` for equal or moderately
/// skewed weights and at worst `O(M * N)` for one heavy backend among many
/// very light ones.
pub fn build(backends: &[MaglevBackend], m: u32) -> Result<MaglevTable, MaglevError> {
    if !is_prime(m) {
        return Err(MaglevError::NotPrime(m));
    }

    // Canonical order: sort by canonical bytes (module docs).
    let mut active: Vec<(CanonicalKey, &MaglevBackend)> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| (CanonicalKey::of(&b.addr), b))
        .collect();
    active.sort_unstable_by(|(a, _), (b, _)| a.bytes().cmp(b.bytes()));
    if let Some(pair) = active
        .windows(2)
        .find(|pair| pair[0].0.bytes() == pair[1].0.bytes())
    {
        return Err(MaglevError::DuplicateBackend(pair[1].1.addr));
    }

    let n = active.len();
    if n == 0 {
        return Ok(MaglevTable {
            backends: Vec::new(),
            slots: Vec::new(),
        });
    }
    if (m as usize) < n {
        return Err(MaglevError::TableTooSmall { m, backends: n });
    }

    // Per backend: `pos` is the slot its permutation proposes next (the
    // paper's `permutation[i][next[i]]`, kept incrementally so the inner loop
    // needs no multiplication or modulo), `skip` its stride.
    let mut pos = Vec::with_capacity(n);
    let mut skip = Vec::with_capacity(n);
    let mut weight = Vec::with_capacity(n);
    for (key, b) in &active {
        let (o, s) = offset_skip(key.bytes(), m);
        pos.push(o);
        skip.push(s);
        weight.push(u64::from(b.weight));
    }
    // Katran-style credits (module docs, "Weights"); u64 so that
    // credit + weight never overflows for u32 weights.
    let max_w = weight.iter().copied().max().unwrap_or(1);
    let mut credit = vec![0u64; n];

    let m_usize = m as usize;
    let mut slots = vec![EMPTY; m_usize];
    // Which slots are taken, one bit each: the probe walk reads this (8 KiB for M = 65537,
    // in L1) instead of `slots` (256 KiB); the walk's loads are most of the build's time.
    let mut taken = vec![0u64; m_usize.div_ceil(64)];
    let is_taken = |taken: &[u64], c: u32| taken[(c >> 6) as usize] >> (c & 63) & 1 != 0;
    let mut filled = 0usize;
    'rounds: loop {
        for i in 0..n {
            credit[i] += weight[i];
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;

            // Walk backend i's permutation to its next free slot. Terminates
            // because the table is not full and the permutation covers all of it.
            let s = skip[i];
            let mut c = pos[i];
            while is_taken(&taken, c) {
                // c + s >= m  <=>  c >= m - s; written this way because
                // c + s itself overflows u32 when m > 2^31.
                c = if c >= m - s { c - (m - s) } else { c + s };
            }
            taken[(c >> 6) as usize] |= 1 << (c & 63);
            slots[c as usize] = i as u32;
            pos[i] = if c >= m - s { c - (m - s) } else { c + s };

            filled += 1;
            if filled == m_usize {
                break 'rounds;
            }
        }
    }

    Ok(MaglevTable {
        backends: active.iter().map(|(_, b)| b.addr).collect(),
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    /// SplitMix64: a tiny fixed-seed PRNG, so tests are reproducible without
    /// an extra dependency.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Fisher-Yates.
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, self.below(i + 1));
            }
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
    }

    /// `n` equal-weight backends 10.0.x.y:80.
    fn equal(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                addr: v4(10, 0, (i / 250) as u8, (i % 250 + 1) as u8, 80),
                weight: 1,
            })
            .collect()
    }

    fn counts(t: &MaglevTable) -> Vec<usize> {
        let mut c = vec![0usize; t.backends.len()];
        for &s in &t.slots {
            c[s as usize] += 1;
        }
        c
    }

    /// Table entries whose backend (by address, since indices shift when the
    /// set changes) differs between two tables of the same size.
    fn moved(a: &MaglevTable, b: &MaglevTable) -> usize {
        assert_eq!(a.slots.len(), b.slots.len());
        a.slots
            .iter()
            .zip(&b.slots)
            .filter(|(&x, &y)| a.backends[x as usize] != b.backends[y as usize])
            .count()
    }

    #[test]
    fn primes() {
        let small: Vec<u32> = (0..50).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
        );
        assert!(is_prime(DEFAULT_M));
        assert!(is_prime(65521));
        assert!(!is_prime(65536));
        assert!(!is_prime(65535));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65537 * 65521 / 65521 * 3)); // 196611 = 3 * 65537
    }

    /// Pins the hash itself so that any change (constants, byte layout) fails
    /// loudly: tables must match across nodes and across daemon versions.
    #[test]
    fn golden_hash() {
        // FNV-1a 64 reference vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);

        let key = CanonicalKey::of(&v4(198, 51, 100, 4, 80));
        assert_eq!(key.bytes(), &[4, 198, 51, 100, 4, 0, 80]);
        let a6 = SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            443,
            7,
            9,
        ));
        let key = CanonicalKey::of(&a6);
        assert_eq!(
            key.bytes(),
            &[6, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb]
        );

        let key = CanonicalKey::of(&v4(198, 51, 100, 4, 80));
        assert_eq!(offset_skip(key.bytes(), DEFAULT_M), GOLDEN_OFFSET_SKIP_V4);
        assert_eq!(
            offset_skip(CanonicalKey::of(&a6).bytes(), DEFAULT_M),
            GOLDEN_OFFSET_SKIP_V6
        );
    }

    const GOLDEN_OFFSET_SKIP_V4: (u32, u32) = (6064, 12073);
    const GOLDEN_OFFSET_SKIP_V6: (u32, u32) = (22012, 18266);

    /// Pins a whole small table: 198.51.100.{4,5,6}:80 at M = 13.
    #[test]
    fn golden_table() {
        let set = [
            MaglevBackend {
                addr: v4(198, 51, 100, 6, 80),
                weight: 1,
            },
            MaglevBackend {
                addr: v4(198, 51, 100, 4, 80),
                weight: 1,
            },
            MaglevBackend {
                addr: v4(198, 51, 100, 5, 80),
                weight: 1,
            },
        ];
        let t = build(&set, 13).unwrap();
        assert_eq!(
            t.backends,
            [
                v4(198, 51, 100, 4, 80),
                v4(198, 51, 100, 5, 80),
                v4(198, 51, 100, 6, 80)
            ]
        );
        assert_eq!(t.slots, GOLDEN_SLOTS);

        // .4 -> 1, .5 -> 2, .6 -> 3.
        let weighted: Vec<MaglevBackend> = set
            .iter()
            .map(|b| MaglevBackend {
                weight: match b.addr.ip() {
                    IpAddr::V4(ip) => u32::from(ip.octets()[3]) - 3,
                    IpAddr::V6(_) => unreachable!(),
                },
                ..*b
            })
            .collect();
        assert_eq!(build(&weighted, 13).unwrap().slots, GOLDEN_WEIGHTED_SLOTS);
    }

    /// Cross-checked against an independent Python implementation of the
    /// module docs (classic `(offset + j * skip) % M` form).
    const GOLDEN_SLOTS: [u32; 13] = [1, 0, 2, 1, 1, 0, 0, 2, 2, 0, 2, 0, 1];
    /// Same set with weights .4 -> 1, .5 -> 2, .6 -> 3.
    const GOLDEN_WEIGHTED_SLOTS: [u32; 13] = [1, 0, 2, 1, 1, 2, 0, 2, 2, 2, 2, 2, 1];

    #[test]
    fn input_order_is_irrelevant() {
        let mut rng = SplitMix64(0x5eed);
        // Mixed families, ports and weights, to exercise the canonical sort.
        let mut set: Vec<MaglevBackend> = (0..40u16)
            .map(|i| {
                let addr = if i % 3 == 0 {
                    SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1),
                        8080 + i % 2,
                        0,
                        0,
                    ))
                } else {
                    v4(192, 0, 2, (i % 7 + 1) as u8, 80 + i)
                };
                MaglevBackend {
                    addr,
                    weight: u32::from(i % 4) + 1,
                }
            })
            .collect();
        // Draining backends must not influence the table either.
        set.push(MaglevBackend {
            addr: v4(192, 0, 2, 200, 80),
            weight: 0,
        });
        let reference = build(&set, DEFAULT_M).unwrap();
        assert_eq!(reference.backends.len(), 40);
        for _ in 0..6 {
            rng.shuffle(&mut set);
            assert_eq!(build(&set, DEFAULT_M).unwrap(), reference);
        }
        let mut sorted = reference.backends.clone();
        sorted.sort();
        assert_eq!(sorted, reference.backends, "backends in canonical order");
    }

    #[test]
    fn weight_zero_is_excluded() {
        let mut set = equal(5);
        let without = build(&set, DEFAULT_M).unwrap();
        set.insert(
            2,
            MaglevBackend {
                addr: v4(10, 9, 9, 9, 80),
                weight: 0,
            },
        );
        let with = build(&set, DEFAULT_M).unwrap();
        assert_eq!(with, without);
        assert!(!with.backends.contains(&v4(10, 9, 9, 9, 80)));
    }

    #[test]
    fn equal_weights_share_evenly() {
        let m = DEFAULT_M as usize;
        for n in 1..=100 {
            let t = build(&equal(n), DEFAULT_M).unwrap();
            assert_eq!(t.slots.len(), m);
            let c = counts(&t);
            let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
            // The classic algorithm: everyone gets floor or ceil of M/N ...
            assert!(min >= m / n && max <= m.div_ceil(n), "n={n}: {min}..{max}");
            // ... which is well within 1%.
            assert!(
                (max - min) as f64 <= 0.01 * max as f64,
                "n={n}: {min}..{max}"
            );
        }
    }

    #[test]
    fn removing_a_backend_moves_about_one_nth() {
        let m = DEFAULT_M as usize;
        for n in [10usize, 50, 100] {
            let set = equal(n);
            let before = build(&set, DEFAULT_M).unwrap();
            let mut worst_extra = 0usize;
            // Remove a few different backends, not just one lucky one.
            for victim in [0, n / 2, n - 1] {
                let mut smaller = set.clone();
                smaller.remove(victim);
                let after = build(&smaller, DEFAULT_M).unwrap();
                let mv = moved(&before, &after);
                let own = counts(&before)[before
                    .backends
                    .iter()
                    .position(|a| *a == set[victim].addr)
                    .unwrap()];
                // The victim's own slots must all move; everything else is extra.
                assert!(mv >= own);
                let extra = mv - own;
                worst_extra = worst_extra.max(extra);
                println!(
                    "maglev n={n} remove #{victim}: moved {mv} of {m} slots, M/N = {}, \
                     extra = {extra} ({:.2}% of M)",
                    m / n,
                    100.0 * extra as f64 / m as f64
                );
                // Bound: the victim's 1/N plus 1% of M. Maglev's extra movement
                // here is 0.2-0.6% of M (Maglev trades a little disruption for
                // balance, paper section 3.4); a naive `slot % N` table moves ~(N-1)/N (checked below).
                let bound = m / n + m / 100;
                assert!(mv <= bound, "n={n}: moved {mv} > {bound}");

                // The same removal with a naive `slot % N` table fails the bound.
                let survivors: Vec<SocketAddr> = smaller.iter().map(|b| b.addr).collect();
                let naive_moved = (0..m)
                    .filter(|s| set[s % n].addr != survivors[s % (n - 1)])
                    .count();
                assert!(naive_moved > bound, "bound must reject naive modulo");
            }
            println!("maglev n={n}: worst extra movement {worst_extra} slots");
        }
    }

    #[test]
    fn weighted_shares_follow_weights() {
        let set = [
            MaglevBackend {
                addr: v4(203, 0, 113, 1, 80),
                weight: 1,
            },
            MaglevBackend {
                addr: v4(203, 0, 113, 2, 80),
                weight: 2,
            },
            MaglevBackend {
                addr: v4(203, 0, 113, 3, 80),
                weight: 3,
            },
        ];
        let t = build(&set, DEFAULT_M).unwrap();
        let c = counts(&t);
        for (i, b) in set.iter().enumerate() {
            let share = c[i] as f64 / DEFAULT_M as f64;
            let want = f64::from(b.weight) / 6.0;
            assert!((share - want).abs() < 0.01, "{i}: {share} vs {want}");
        }

        // Larger, uneven set: every share within 5% (relative) of its weight share.
        let set: Vec<MaglevBackend> = (0..30u8)
            .map(|i| MaglevBackend {
                addr: v4(203, 0, 113, i + 10, 80),
                weight: u32::from(i % 5) * 10 + 5,
            })
            .collect();
        let total: u32 = set.iter().map(|b| b.weight).sum();
        let t = build(&set, DEFAULT_M).unwrap();
        let c = counts(&t);
        for (i, b) in set.iter().enumerate() {
            let got = c[i] as f64;
            let want = f64::from(b.weight) / f64::from(total) * f64::from(DEFAULT_M);
            assert!((got - want).abs() <= 0.05 * want, "{i}: {got} vs {want}");
        }
    }

    #[test]
    fn extreme_weights_still_fill_the_table() {
        let mut set = equal(20);
        set[3].weight = u32::MAX;
        let t = build(&set, DEFAULT_M).unwrap();
        assert!(t.slots.iter().all(|&s| (s as usize) < t.backends.len()));
        let heavy = t.backends.iter().position(|a| *a == set[3].addr).unwrap();
        assert!(counts(&t)[heavy] >= DEFAULT_M as usize - 19);
    }

    #[test]
    fn errors() {
        let set = equal(6);
        assert_eq!(build(&set, 65536), Err(MaglevError::NotPrime(65536)));
        assert_eq!(build(&set, 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(build(&set, 0), Err(MaglevError::NotPrime(0)));
        assert_eq!(build(&[], 12), Err(MaglevError::NotPrime(12)));
        assert_eq!(
            build(&set, 5),
            Err(MaglevError::TableTooSmall { m: 5, backends: 6 })
        );
        // M == N is allowed: one slot each.
        let t = build(&set[..5], 5).unwrap();
        assert_eq!(counts(&t), [1; 5]);

        let mut dup = equal(4);
        dup.push(MaglevBackend {
            addr: dup[1].addr,
            weight: 7,
        });
        assert_eq!(
            build(&dup, DEFAULT_M),
            Err(MaglevError::DuplicateBackend(dup[1].addr))
        );
        // A draining duplicate is not a conflict: it is not in the table.
        dup.last_mut().unwrap().weight = 0;
        assert!(build(&dup, DEFAULT_M).is_ok());
    }

    #[test]
    fn empty_set_gives_empty_table() {
        let t = build(&[], DEFAULT_M).unwrap();
        assert!(t.backends.is_empty() && t.slots.is_empty());
        assert_eq!(t.lookup(42), None);
        let drained = [MaglevBackend {
            addr: v4(10, 0, 0, 1, 80),
            weight: 0,
        }];
        assert_eq!(build(&drained, DEFAULT_M).unwrap(), t);
    }

    #[test]
    fn lookup_and_translate() {
        let set = equal(3);
        let t = build(&set, 13).unwrap();
        for h in 0..40u32 {
            let slot = t.slots[(h % 13) as usize] as usize;
            assert_eq!(t.lookup(h), Some(t.backends[slot]));
        }
        let ids = t.translate(|a| u32::from(a.port()) + 1000 * u32::from(a.ip().is_ipv4()));
        assert_eq!(ids.len(), 13);
        assert!(ids.iter().all(|&id| id == 1080));
    }

    /// Build time for the sizing the daemon uses; meaningful with `--release`.
    #[test]
    fn build_time_n100() {
        let time = |what: &str, set: &[MaglevBackend]| {
            let runs = 20;
            let start = std::time::Instant::now();
            for _ in 0..runs {
                std::hint::black_box(build(std::hint::black_box(set), DEFAULT_M).unwrap());
            }
            let per = start.elapsed() / runs;
            println!(
                "maglev build N={} M={DEFAULT_M} {what}: {per:?} per table ({} build)",
                set.len(),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
            );
        };
        let mut set = equal(100);
        time("equal weights", &set);
        // Worst case for the credit loop: one heavy backend among light ones.
        set[0].weight = 1000;
        time("one weight 1000, others 1", &set);
    }
}
