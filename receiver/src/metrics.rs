//! `GET /metrics`: counters kept by this receiver, in Prometheus' text format. With
//! several receivers, Prometheus sums them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    records: BTreeMap<(String, String, &'static str), u64>,
    replays: BTreeMap<String, u64>,
    rejections: BTreeMap<(String, String), u64>,
    coalesced: BTreeMap<String, u64>,
    latency: BTreeMap<String, Histogram>,
    storage_errors: u64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// One answered HTTP request: its route (`create`, `batch`, …), status and time.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.with(|m| {
            *m.requests.entry((route.to_string(), status)).or_default() += 1;
            let h = m.latency.entry(route.to_string()).or_default();
            let secs = took.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        })
    }

    /// What a record write came to (`created`, `updated`, `ignored_older`, …).
    pub fn record(&self, collection: &str, device: &str, effect: &'static str) {
        self.with(|m| {
            *m.records
                .entry((collection.to_string(), device.to_string(), effect))
                .or_default() += 1
        })
    }

    pub fn replay(&self, collection: &str) {
        self.with(|m| *m.replays.entry(collection.to_string()).or_default() += 1)
    }

    /// A refused write: `validation`, `auth`, `key_reused`, `too_large`, …
    pub fn rejection(&self, collection: &str, reason: &str) {
        self.with(|m| {
            *m.rejections
                .entry((collection.to_string(), reason.to_string()))
                .or_default() += 1
        })
    }

    /// A write replaced by a later state of the same record before it was written.
    pub fn coalesced(&self, collection: &str) {
        self.with(|m| *m.coalesced.entry(collection.to_string()).or_default() += 1)
    }

    pub fn storage_error(&self) {
        self.with(|m| m.storage_errors += 1)
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP ferry_receiver_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE ferry_receiver_requests_total counter");
        for ((route, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "ferry_receiver_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(out, "# HELP ferry_receiver_records_total Record writes by collection, device and what they came to (created, updated, ignored_older, ignored_terminal, replayed, key_reused, refused, in_progress, invalid).");
        let _ = writeln!(out, "# TYPE ferry_receiver_records_total counter");
        for ((collection, device, effect), n) in &m.records {
            let _ = writeln!(
                out,
                "ferry_receiver_records_total{{collection=\"{}\",device=\"{}\",outcome=\"{effect}\"}} {n}",
                escape(collection),
                escape(device)
            );
        }
        let _ = writeln!(out, "# HELP ferry_receiver_replays_total Requests answered with the first answer of their Idempotency-Key.");
        let _ = writeln!(out, "# TYPE ferry_receiver_replays_total counter");
        for (collection, n) in &m.replays {
            let _ = writeln!(
                out,
                "ferry_receiver_replays_total{{collection=\"{}\"}} {n}",
                escape(collection)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_receiver_rejections_total Writes refused, by reason."
        );
        let _ = writeln!(out, "# TYPE ferry_receiver_rejections_total counter");
        for ((collection, reason), n) in &m.rejections {
            let _ = writeln!(
                out,
                "ferry_receiver_rejections_total{{collection=\"{}\",reason=\"{}\"}} {n}",
                escape(collection),
                escape(reason)
            );
        }
        let _ = writeln!(out, "# HELP ferry_receiver_coalesced_total Updates replaced by a later state of the same record before being written.");
        let _ = writeln!(out, "# TYPE ferry_receiver_coalesced_total counter");
        for (collection, n) in &m.coalesced {
            let _ = writeln!(
                out,
                "ferry_receiver_coalesced_total{{collection=\"{}\"}} {n}",
                escape(collection)
            );
        }
        let _ = writeln!(
            out,
            "# HELP ferry_receiver_storage_errors_total Writes the database failed (answered 503)."
        );
        let _ = writeln!(out, "# TYPE ferry_receiver_storage_errors_total counter");
        let _ = writeln!(
            out,
            "ferry_receiver_storage_errors_total {}",
            m.storage_errors
        );
        let _ = writeln!(
            out,
            "# HELP ferry_receiver_request_duration_seconds Time to answer a request, by route."
        );
        let _ = writeln!(
            out,
            "# TYPE ferry_receiver_request_duration_seconds histogram"
        );
        for (route, h) in &m.latency {
            let route = escape(route);
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "ferry_receiver_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "ferry_receiver_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "ferry_receiver_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "ferry_receiver_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request("create", 201, Duration::from_millis(3));
        m.record("downloads", "box\"1", "created");
        m.replay("downloads");
        m.rejection("downloads", "validation");
        let text = m.render();
        assert!(text.contains("ferry_receiver_requests_total{route=\"create\",status=\"201\"} 1"));
        assert!(text.contains("device=\"box\\\"1\",outcome=\"created\"} 1"));
        assert!(text.contains(
            "ferry_receiver_request_duration_seconds_bucket{route=\"create\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "ferry_receiver_request_duration_seconds_bucket{route=\"create\",le=\"0.0025\"} 0"
        ));
        assert!(text.contains("ferry_receiver_replays_total{collection=\"downloads\"} 1"));
    }
}
