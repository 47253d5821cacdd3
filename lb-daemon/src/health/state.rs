//! One check's up/down decision: keepalived's retry rule, with no I/O and no clock.
//!
//! keepalived 2.x, `check_tcp.c` `tcp_epilog` (the HTTP and SMTP checkers share the rule):
//!
//! ```c
//! if (is_success || checker->retry_it >= checker->retry) {
//!         delay = checker->delay_loop;
//!         checker->retry_it = 0;
//!         if (is_success && (!checker->is_up || !checker->has_run)) -> UP
//!         else if (!is_success && (checker->is_up || !checker->has_run)) -> DOWN
//! } else {
//!         delay = checker->delay_before_retry;
//!         ++checker->retry_it;
//! }
//! ```
//!
//! So a success counts at once; an up check goes down only when `retry` further runs,
//! `delay_before_retry` apart, fail too; after either the next run is `delay_loop` away. At
//! start-up `check_parser.c` sets `retry_it = retry` ("For non alpha mode, one failure is
//! enough initially"): the very first failure counts at once, so a server that is down when
//! the daemon starts leaves after one check rather than after `retry` more. In alpha mode a
//! check starts down (`set_checker_state(checker, false)`) and its first success brings it up.
//!
//! keepalived's `MISC_CHECK` (`check_misc.c`) only retries while up; here every kind follows
//! the rule above, so a down check that fails is retried too and can come back a
//! `delay_before_retry` later instead of a `delay_loop` later.

/// When the next run of a check is due, counted from the end of this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After `delay_loop`.
    Loop,
    /// After `delay_before_retry`.
    Retry,
}

/// What one result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `Some(up)` when the check's state changed.
    pub change: Option<bool>,
    pub next: Next,
}

/// One check's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    retry: u32,
    up: bool,
    /// Failed runs in a row not yet counted (keepalived's `retry_it`).
    retry_it: u32,
}

impl CheckState {
    /// A check that has not run: up, or down in `alpha` mode.
    pub fn new(alpha: bool, retry: u32) -> Self {
        CheckState {
            retry,
            up: !alpha,
            retry_it: retry,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one run's result.
    pub fn record(&mut self, ok: bool) -> Step {
        if ok || self.retry_it >= self.retry {
            self.retry_it = 0;
            let change = (self.up != ok).then_some(ok);
            self.up = ok;
            Step {
                change,
                next: Next::Loop,
            }
        } else {
            self.retry_it += 1;
            Step {
                change: None,
                next: Next::Retry,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as the documentation states it, computed from the whole history: up after
    /// a success; after a failure, down when it is the first result, or the check was
    /// already down, or it ends a run of `retry + 1` failures.
    fn oracle(alpha: bool, retry: u32, results: &[bool]) -> Vec<bool> {
        let mut out = Vec::new();
        let mut up = !alpha;
        for (i, &ok) in results.iter().enumerate() {
            up = if ok {
                true
            } else if i == 0 || !up {
                false
            } else {
                let run = results[..=i].iter().rev().take_while(|r| !**r).count();
                run < retry as usize + 1
            };
            out.push(up);
        }
        out
    }

    /// Every history of up to 10 results, for retry 0..=3, with and without alpha.
    #[test]
    fn exhaustive_against_the_oracle() {
        for alpha in [false, true] {
            for retry in 0..=3 {
                for len in 0..=10 {
                    for bits in 0u32..(1 << len) {
                        let results: Vec<bool> = (0..len).map(|i| bits & (1 << i) != 0).collect();
                        let want = oracle(alpha, retry, &results);
                        let mut s = CheckState::new(alpha, retry);
                        let mut prev = !alpha;
                        let mut retries_in_a_row = 0;
                        for (i, &ok) in results.iter().enumerate() {
                            let step = s.record(ok);
                            assert_eq!(
                                s.is_up(),
                                want[i],
                                "alpha {alpha} retry {retry} {results:?} at {i}"
                            );
                            assert_eq!(
                                step.change,
                                (want[i] != prev).then_some(want[i]),
                                "alpha {alpha} retry {retry} {results:?} at {i}"
                            );
                            // A retry follows only a failure that changed nothing, and at
                            // most `retry` of them in a row.
                            if step.next == Next::Retry {
                                assert!(!ok && step.change.is_none());
                                retries_in_a_row += 1;
                                assert!(retries_in_a_row <= retry);
                            } else {
                                retries_in_a_row = 0;
                            }
                            prev = want[i];
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn retries_then_down() {
        let mut s = CheckState::new(false, 2);
        assert_eq!(
            s.record(true),
            Step {
                change: None,
                next: Next::Loop
            }
        );
        for _ in 0..2 {
            assert_eq!(
                s.record(false),
                Step {
                    change: None,
                    next: Next::Retry
                }
            );
        }
        assert_eq!(
            s.record(false),
            Step {
                change: Some(false),
                next: Next::Loop
            }
        );
        // Down and failing: retried like keepalived's TCP_CHECK, no change.
        assert_eq!(s.record(false).next, Next::Retry);
        assert_eq!(s.record(false).next, Next::Retry);
        assert_eq!(s.record(false).next, Next::Loop);
        // One success is enough to come back.
        assert_eq!(
            s.record(true),
            Step {
                change: Some(true),
                next: Next::Loop
            }
        );
    }

    #[test]
    fn success_resets_the_retries() {
        let mut s = CheckState::new(false, 1);
        s.record(true);
        assert_eq!(s.record(false).next, Next::Retry);
        assert_eq!(s.record(true).change, None);
        assert_eq!(s.record(false).next, Next::Retry, "a fresh run of retries");
        assert!(s.is_up());
    }

    #[test]
    fn first_failure_counts_at_once() {
        let mut s = CheckState::new(false, 5);
        assert_eq!(s.record(false).change, Some(false));
    }

    #[test]
    fn alpha_starts_down_until_the_first_success() {
        let mut s = CheckState::new(true, 3);
        assert!(!s.is_up());
        assert_eq!(s.record(false).change, None);
        assert_eq!(s.record(true).change, Some(true));
        // From then on the retries apply.
        assert_eq!(s.record(false).change, None);
    }

    #[test]
    fn retry_zero_means_one_failure() {
        let mut s = CheckState::new(false, 0);
        s.record(true);
        assert_eq!(
            s.record(false),
            Step {
                change: Some(false),
                next: Next::Loop
            }
        );
    }
}
