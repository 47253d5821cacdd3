//! The count-based schedulers' ranking (pure): of a service's live backends, the two that
//! IPVS's `lc`, `wlc`, `sed`, `nq`, `fo` or `ovf` would pick first on the counts now. The
//! daemon ranks every 20 ms and writes the pair into `CANDIDATES`; the program chooses
//! between the two by the same formula on the counts at the packet (lb-ebpf's `least`), so
//! the connections a burst opens move the choice at once, and any other backend that
//! became lighter is ranked in at the next round. The formulas here and there must agree:
//! `score` mirrors the program's.
use std::cmp::Ordering;

use crate::model::Scheduler;

/// One backend as the ranking sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub weight: u32,
    pub active: u64,
    pub inactive: u64,
    /// Present with a MAC and not draining.
    pub usable: bool,
    /// Over its `uthreshold` (see [`overloaded`]).
    pub overloaded: bool,
}

/// (overhead, weight): the lighter backend has the smaller overhead per unit of weight;
/// weight 0 takes nothing. As the program's `score`.
pub fn score(sched: Scheduler, c: &Candidate) -> (u64, u64) {
    let w = u64::from(c.weight);
    let (a, i) = (c.active, c.inactive);
    if !c.usable || w == 0 || c.overloaded || (sched == Scheduler::Ovf && a > w) {
        return (1, 0);
    }
    match sched {
        Scheduler::Lc => ((a << 8) + i, 1),
        Scheduler::Wlc => ((a << 8) + i, w),
        Scheduler::Nq if a == 0 => (0, w),
        Scheduler::Sed | Scheduler::Nq => (a + 1, w),
        // fo, ovf: the heaviest.
        _ => (1, w),
    }
}

/// `a` before `b`: lighter, or as light (then ring order decides, as IPVS's first-found).
fn lighter(a: (u64, u64), b: (u64, u64)) -> Ordering {
    // a.oh / a.w < b.oh / b.w, without division; weight 0 last.
    match (a.1, b.1) {
        (0, 0) => Ordering::Equal,
        (0, _) => Ordering::Greater,
        (_, 0) => Ordering::Less,
        _ => (u128::from(a.0) * u128::from(b.1)).cmp(&(u128::from(b.0) * u128::from(a.1))),
    }
}

/// The two backends to offer, in ring order among equals; none where fewer qualify.
pub fn best_two(sched: Scheduler, candidates: &[Candidate]) -> [Option<u32>; 2] {
    let mut scored: Vec<((u64, u64), usize)> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (score(sched, c), i))
        .filter(|(s, _)| s.1 != 0)
        .collect();
    // Stable: equals keep ring order.
    scored.sort_by(|a, b| lighter(a.0, b.0));
    let id = |k: usize| scored.get(k).map(|(_, i)| candidates[*i].id);
    [id(0), id(1)]
}

/// IPVS's overload rule with its hysteresis: set at `upper` connections, cleared below
/// `lower` (0: three quarters of `upper`); `was` the flag as it stands.
pub fn overloaded(was: bool, total: u64, upper: u32, lower: u32) -> bool {
    if upper == 0 {
        return false;
    }
    if was {
        let clear = if lower != 0 {
            total < u64::from(lower)
        } else {
            total * 4 < u64::from(upper) * 3
        };
        !clear
    } else {
        total >= u64::from(upper)
    }
}

impl super::Dataplane<super::maps::BpfMaps> {
    /// Ranks the backends of every count-based service on the counts now and offers the
    /// best two to the program (`CANDIDATES`), writing only what changed; sets and clears
    /// the overload flags on the way. Returns how many services it ranked.
    pub fn rank(&self) -> usize {
        let maps = &self.writer;
        let mut ranked = 0;
        for (&sid, info) in &self.current.infos {
            let Some(sched) = Scheduler::of_code(info.sched).filter(|s| s.counts()) else {
                continue;
            };
            let Some(ring) = self.current.rings.get(&sid) else {
                continue;
            };
            let candidates: Vec<Candidate> = ring
                .slots
                .iter()
                .filter_map(|&bid| {
                    let b = self.current.backends.get(&bid)?;
                    let (active, inactive) = maps.load(bid);
                    let was = maps.overload_flag(bid);
                    let over = overloaded(was, active + inactive, b.u_threshold, b.l_threshold);
                    if over != was {
                        maps.set_overload_flag(bid, over);
                    }
                    Some(Candidate {
                        id: bid,
                        weight: u32::from(b.weight),
                        active,
                        inactive,
                        usable: b.flags
                            & (lb_common::BACKEND_F_PRESENT | lb_common::BACKEND_F_DRAINING)
                            == lb_common::BACKEND_F_PRESENT,
                        overloaded: over,
                    })
                })
                .collect();
            // As slots of the ring + 1: the program reads the backend from the service's own
            // ring, so a pair left from a service that had this id before names nothing of
            // another service's.
            let [a, b] = best_two(sched, &candidates);
            let enc = |x: Option<u32>| {
                x.and_then(|id| ring.slots.iter().position(|&s| s == id))
                    .map_or(0, |slot| slot as u32 + 1)
            };
            maps.set_candidates(sid, [enc(a), enc(b)]);
            ranked += 1;
        }
        ranked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, weight: u32, active: u64, inactive: u64) -> Candidate {
        Candidate {
            id,
            weight,
            active,
            inactive,
            usable: true,
            overloaded: false,
        }
    }

    #[test]
    fn wlc_picks_the_least_overhead_per_weight_and_ties_go_first() {
        // One server with 50 established connections, two idle: the idle ones, in order.
        let pool = [c(1, 1, 50, 0), c(2, 1, 0, 0), c(3, 1, 0, 0)];
        assert_eq!(best_two(Scheduler::Wlc, &pool), [Some(2), Some(3)]);
        // Active weighs 256 inactive: 1 active is heavier than 255 inactive.
        let pool = [c(1, 1, 1, 0), c(2, 1, 0, 255)];
        assert_eq!(best_two(Scheduler::Wlc, &pool), [Some(2), Some(1)]);
        let pool = [c(1, 1, 1, 0), c(2, 1, 0, 256)];
        assert_eq!(best_two(Scheduler::Wlc, &pool), [Some(1), Some(2)]);
        // Weights 1:3 with equal load: the heavier one first, until it holds three times.
        let pool = [c(1, 1, 10, 0), c(2, 3, 10, 0)];
        assert_eq!(best_two(Scheduler::Wlc, &pool)[0], Some(2));
        let pool = [c(1, 1, 10, 0), c(2, 3, 31, 0)];
        assert_eq!(best_two(Scheduler::Wlc, &pool)[0], Some(1));
        // lc ignores weights.
        let pool = [c(1, 1, 10, 0), c(2, 3, 11, 0)];
        assert_eq!(best_two(Scheduler::Lc, &pool)[0], Some(1));
    }

    #[test]
    fn sed_nq_fo_ovf_follow_ipvs() {
        // sed: (active + 1) / weight: 3 active at weight 4 (1.0) beats 0 at weight 1 (1.0)?
        // Equal: ring order.
        let pool = [c(1, 1, 0, 0), c(2, 4, 3, 0)];
        assert_eq!(best_two(Scheduler::Sed, &pool), [Some(1), Some(2)]);
        let pool = [c(1, 1, 0, 0), c(2, 5, 3, 0)];
        assert_eq!(best_two(Scheduler::Sed, &pool)[0], Some(2));
        // nq: an idle server first, whatever the weights.
        let pool = [c(1, 100, 1, 0), c(2, 1, 0, 9)];
        assert_eq!(best_two(Scheduler::Nq, &pool)[0], Some(2));
        // fo: the heaviest available.
        let pool = [c(1, 5, 0, 0), c(2, 10, 1000, 0), c(3, 10, 0, 0)];
        assert_eq!(best_two(Scheduler::Fo, &pool), [Some(2), Some(3)]);
        // ovf: the heaviest with no more active connections than its weight.
        let pool = [c(1, 5, 0, 0), c(2, 10, 11, 0), c(3, 10, 10, 0)];
        assert_eq!(best_two(Scheduler::Ovf, &pool), [Some(3), Some(1)]);
    }

    #[test]
    fn unusable_weight_zero_and_overloaded_take_nothing() {
        let mut down = c(1, 1, 0, 0);
        down.usable = false;
        let mut over = c(2, 1, 0, 0);
        over.overloaded = true;
        let pool = [down, over, c(3, 0, 0, 0), c(4, 1, 99, 0)];
        assert_eq!(best_two(Scheduler::Wlc, &pool), [Some(4), None]);
        assert_eq!(best_two(Scheduler::Wlc, &[]), [None, None]);
    }

    #[test]
    fn overload_has_ipvs_hysteresis() {
        assert!(!overloaded(false, 99, 100, 0));
        assert!(overloaded(false, 100, 100, 0));
        // Set: cleared below three quarters (75) without a lower threshold...
        assert!(overloaded(true, 75, 100, 0));
        assert!(!overloaded(true, 74, 100, 0));
        // ...or below the lower one.
        assert!(overloaded(true, 50, 100, 50));
        assert!(!overloaded(true, 49, 100, 50));
        assert!(!overloaded(true, 1000, 0, 0));
    }
}
