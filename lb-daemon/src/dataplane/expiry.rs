//! Which flows the sweep removes (pure): IPVS's connection timers, applied in batches.
use lb_common::{conn_state, FlowValue};

/// A flow past its timeout: its state's (`timeouts`, `lb_common::conn_state`), or for an
/// established connection, a UDP flow or a fragments flow its service's idle timeout
/// (`idle`; none: the service is gone, and so is the flow). 0: no timeout. As the
/// program's `usable`.
pub fn expired(
    v: &FlowValue,
    now: u32,
    idle: Option<u32>,
    timeouts: &[u32; conn_state::COUNT as usize],
) -> bool {
    let Some(idle) = idle else {
        return true;
    };
    let timeout = match v.state {
        conn_state::ESTABLISHED | conn_state::UDP | conn_state::NONE => idle,
        s => timeouts.get(s as usize).copied().unwrap_or(0),
    };
    timeout != 0 && now.wrapping_sub(v.last_seen) > timeout
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub swept: super::flows::Swept,
    /// Flows in SYN_RECV it removed at their timeout.
    pub embryonic_expired: u64,
    /// Flows in SYN_RECV the program had counted that were gone unseen (LRU evictions).
    pub embryonic_lost: u64,
}

/// The counts the sweep found: what `BACKEND_LOAD` and the SYN guard should say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Backend id -> (active, inactive).
    pub per_backend: std::collections::HashMap<u32, (i32, i32)>,
    pub embryonic: i32,
}

impl Tally {
    /// A live flow of a backend that still holds its slot (`current`: the flow's
    /// generation is the backend's).
    pub fn add(&mut self, v: &FlowValue, current: bool) {
        if v.state == conn_state::SYN_RECV {
            self.embryonic += 1;
        }
        if !current || !conn_state::is_counted(v.state) {
            return;
        }
        let e = self.per_backend.entry(v.backend).or_default();
        if conn_state::is_active(v.state) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
}

impl super::Dataplane<super::maps::BpfMaps> {
    /// IPVS's connection timers and its counters' truth: removes from `flows` every flow
    /// past its state's timeout, and sets the backends' connection counts and the SYN
    /// guard's embryonic count to what the tables hold. The program keeps the counts as it
    /// sees flows open and change state; expiries and LRU evictions it never sees, and they
    /// are put right here. The correction is an atomic add of (counted - what the map said
    /// when the walk began), so what the program adds during the walk stays (a flow opened
    /// during the walk that the walk also saw counts twice until the next sweep).
    pub fn sweep(
        &self,
        flows: &super::flows::FlowTables,
    ) -> Result<SweepReport, super::flows::FlowsError> {
        let maps = &self.writer;
        let now = maps.clock_seconds();
        let timeouts = *maps.timeouts();
        let before = maps.load_snapshot();
        let (embryonic_before, _, _) = maps.guard();
        let current = &self.current;
        let mut tally = Tally::default();
        let embryonic_expired = std::cell::Cell::new(0u64);
        let swept = flows.sweep(
            |v| {
                let idle = current.infos.get(&v.service).map(|i| i.idle_timeout_s);
                let gone = expired(v, now, idle, &timeouts);
                if gone && v.state == conn_state::SYN_RECV {
                    embryonic_expired.set(embryonic_expired.get() + 1);
                }
                gone
            },
            |v| {
                let live = current
                    .backends
                    .get(&v.backend)
                    .is_some_and(|b| b.generation == v.generation);
                tally.add(v, live);
            },
        )?;
        for (id, (a, i)) in before.iter().enumerate() {
            let (want_a, want_i) = tally
                .per_backend
                .get(&(id as u32))
                .copied()
                .unwrap_or_default();
            maps.correct_load(id as u32, (want_a - a, want_i - i));
        }
        maps.correct_embryonic(tally.embryonic - embryonic_before);
        let expired_sr = embryonic_expired.get();
        // What the program counted less what is there and what the sweep removed: gone
        // unseen, evicted (give or take what changed during the walk).
        let lost = i64::from(embryonic_before) - i64::from(tally.embryonic) - expired_sr as i64;
        Ok(SweepReport {
            swept,
            embryonic_expired: expired_sr,
            embryonic_lost: lost.max(0) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::conn_state::*;

    fn flow(state: u32, last_seen: u32) -> FlowValue {
        FlowValue {
            backend: 3,
            generation: 1,
            service: 0,
            last_seen,
            state,
        }
    }

    #[test]
    fn each_state_has_its_timeout() {
        let t = DEFAULT_TIMEOUTS;
        let idle = Some(900);
        // Established: the service's idle timeout, not the table's.
        assert!(!expired(&flow(ESTABLISHED, 100), 1000, idle, &t));
        assert!(expired(&flow(ESTABLISHED, 99), 1000, idle, &t));
        // A closed connection leaves at its short timeout.
        assert!(!expired(&flow(CLOSE, 990), 1000, idle, &t));
        assert!(expired(&flow(CLOSE, 989), 1000, idle, &t));
        assert!(!expired(&flow(FIN_WAIT, 880), 1000, idle, &t));
        assert!(expired(&flow(FIN_WAIT, 879), 1000, idle, &t));
        assert!(!expired(&flow(SYN_RECV, 940), 1000, idle, &t));
        assert!(expired(&flow(SYN_RECV, 939), 1000, idle, &t));
        // UDP and fragments flows: the service's (a UDP service's default is 300).
        assert!(!expired(&flow(UDP, 700), 1000, Some(300), &t));
        assert!(expired(&flow(UDP, 699), 1000, Some(300), &t));
        // 0: never; a gone service: at once.
        assert!(!expired(&flow(ESTABLISHED, 0), 100_000, Some(0), &t));
        assert!(expired(&flow(ESTABLISHED, 1000), 1000, None, &t));
        // The clock wraps.
        assert!(!expired(&flow(CLOSE, u32::MAX - 2), 5, idle, &t));
    }

    #[test]
    fn the_tally_counts_as_ipvsadm() {
        let mut t = Tally::default();
        t.add(&flow(ESTABLISHED, 0), true);
        t.add(&flow(SYN_RECV, 0), true);
        t.add(&flow(FIN_WAIT, 0), true);
        t.add(&flow(UDP, 0), true);
        t.add(&flow(NONE, 0), true);
        // A flow of the slot's previous occupant counts for nobody.
        t.add(&flow(ESTABLISHED, 0), false);
        assert_eq!(t.per_backend[&3], (1, 3));
        assert_eq!(t.embryonic, 1);
    }
}
