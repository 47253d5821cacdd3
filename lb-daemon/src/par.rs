//! Work split across the cores, for the few jobs that grow with a configuration of thousands
//! of services: parsing its service blocks at start, reading the per-CPU counters, encoding
//! a status. Each core's thread takes one range of the items; results come back in order.

use std::ops::Range;

/// `f` on `0..n` cut in one range per core, each on a thread of its own; the results in
/// the ranges' order. Below `from` items (or on one core) `f` runs once, here, on `0..n`.
/// A panic in `f` is a bug, and goes on as one on this thread.
pub fn ranges<R: Send>(n: usize, from: usize, f: impl Fn(Range<usize>) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n == 0 || n < from || cores < 2 {
        return vec![f(0..n)];
    }
    let part = n.div_ceil(cores);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..n)
            .step_by(part)
            .map(|start| scope.spawn(move || f(start..(start + part).min(n))))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges cover `0..n` once, in order, whatever `n` and the threshold.
    #[test]
    fn ranges_cover_everything_once_in_order() {
        for (n, from) in [(0, 0), (1, 0), (7, 0), (1001, 0), (1001, 2000), (5, 5)] {
            let got: Vec<usize> = ranges(n, from, |r| r.collect::<Vec<_>>())
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(got, (0..n).collect::<Vec<_>>(), "n {n}, from {from}");
        }
        assert_eq!(
            ranges(10, 11, |r| r).len(),
            1,
            "below the threshold: one call"
        );
    }
}
