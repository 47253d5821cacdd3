//! The benchmarks' common output: entries with a target, printed as a table or as JSON
//! lines (`{"name", "value", "unit", "baseline", "ratio", "target", "pass"}`), and the median
//! they are mostly taken from.

/// What an entry must reach to pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    RatioAtMost(f64),
    RatioAtLeast(f64),
    ValueAtMost(f64),
    ValueAtLeast(f64),
    ValueEquals(f64),
    /// A figure printed for information, with no target.
    Info,
}

impl Target {
    pub fn describe(self) -> String {
        match self {
            Target::RatioAtMost(t) => format!("ratio <= {t:?}"),
            Target::RatioAtLeast(t) => format!("ratio >= {t:?}"),
            Target::ValueAtMost(t) => format!("value <= {t:?}"),
            Target::ValueAtLeast(t) => format!("value >= {t:?}"),
            Target::ValueEquals(t) => format!("value == {t}"),
            Target::Info => "information".to_string(),
        }
    }
}

/// One result line.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// Measured in the same run; `None` when there is no meaningful baseline.
    pub baseline: Option<f64>,
    pub target: Target,
}

impl Entry {
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.map(|b| self.value / b)
    }

    pub fn pass(&self) -> bool {
        match (self.target, self.ratio()) {
            (Target::RatioAtMost(t), Some(r)) => r <= t,
            (Target::RatioAtLeast(t), Some(r)) => r >= t,
            (Target::ValueAtMost(t), _) => self.value <= t,
            (Target::ValueAtLeast(t), _) => self.value >= t,
            (Target::ValueEquals(t), _) => self.value == t,
            (Target::Info, _) => true,
            (_, None) => false,
        }
    }

    pub fn json(&self) -> String {
        let num = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.4}"));
        format!(
            r#"{{"name":"{}","value":{:.4},"unit":"{}","baseline":{},"ratio":{},"target":"{}","pass":{}}}"#,
            self.name,
            self.value,
            self.unit,
            num(self.baseline),
            num(self.ratio()),
            self.target.describe(),
            self.pass()
        )
    }

    pub fn row(&self) -> String {
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        format!(
            "{:<28} {:>9.2} {:<7} {:>9} {:>7} {:<13} {}",
            self.name,
            self.value,
            self.unit,
            num(self.baseline),
            self.ratio().map_or("-".to_string(), |r| format!("{r:.3}")),
            self.target.describe(),
            if self.pass() { "PASS" } else { "MISS" }
        )
    }
}

fn table_header() -> String {
    format!(
        "{:<28} {:>9} {:<7} {:>9} {:>7} {:<13} {}",
        "name", "value", "unit", "baseline", "ratio", "target", "result"
    )
}

/// Prints entries as they complete, so a long run shows progress and a late failure keeps
/// the earlier results.
pub struct Report {
    json: bool,
    entries: Vec<Entry>,
}

impl Report {
    pub fn new(json: bool) -> Self {
        if !json {
            println!("{}", table_header());
        }
        Self {
            json,
            entries: Vec::new(),
        }
    }

    pub fn add(&mut self, e: Entry) {
        if self.json {
            println!("{}", e.json());
        } else {
            println!("{}", e.row());
        }
        self.entries.push(e);
    }

    pub fn finish(&self) {
        let missed: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| !e.pass())
            .map(|e| e.name)
            .collect();
        // The summary goes to stderr so that `--json` output stays one object per line.
        if missed.is_empty() {
            eprintln!("lb-bench: every target met");
        } else {
            eprintln!("lb-bench: target missed by {}", missed.join(", "));
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
