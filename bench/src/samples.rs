//! Latency samples and their percentiles.

use crate::*;

/// Latency samples in nanoseconds; percentiles are exact (sorted).
#[derive(Default)]
pub(crate) struct Samples(pub(crate) Vec<u64>);

impl Samples {
    pub(crate) fn extend(&mut self, other: Vec<u64>) {
        if self.0.is_empty() {
            self.0 = other;
        } else {
            self.0.extend(other);
        }
    }

    pub(crate) fn finish(&mut self) {
        self.0.sort_unstable();
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q` quantile in milliseconds (samples must be finished).
    pub(crate) fn ms(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let n = self.0.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.0[rank - 1] as f64 / 1e6)
    }

    pub(crate) fn max_ms(&self) -> Option<f64> {
        self.0.last().map(|v| *v as f64 / 1e6)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "count": self.len(),
            "p50_ms": round3(self.ms(0.50)),
            "p99_ms": round3(self.ms(0.99)),
            "p999_ms": round3(self.ms(0.999)),
            "max_ms": round3(self.max_ms()),
        })
    }
}

pub(crate) fn round3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
