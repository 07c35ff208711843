//! Figures 10 to 13: delivery over a WAN link (every answer 50 ms after its
//! request) one record a request and in batches, batches on loopback, and the bytes
//! gzip saves on the wire.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{verdict, Bench};
use ferry_devkit::harness::*;

/// The time every answer of the WAN figures' receiver takes.
const WAN_RTT: Duration = Duration::from_millis(50);

/// `max_concurrent` as installed (config/ferry.example.toml).
const DEFAULT_MAX_CONCURRENT: usize = 4;

/// The events collection sent in batches, with the default batch limits.
const BATCHED_EVENTS: &str = "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\nbatch_endpoint = \"/api/events/batch\"\n";

/// What the receiver saw of one delivery.
#[derive(Default)]
struct Wire {
    records: AtomicU64,
    requests: AtomicU64,
    /// Request bodies as they came (compressed or not).
    body_bytes: AtomicU64,
    /// The same bodies decompressed.
    json_bytes: AtomicU64,
}

/// One delivery, timed: how long `ferry sync --once` took and what arrived.
struct Delivery {
    took: Duration,
    records: u64,
    requests: u64,
    body_bytes: u64,
    json_bytes: u64,
}

impl Delivery {
    fn rate(&self) -> f64 {
        self.records as f64 / self.took.as_secs_f64()
    }
}

/// Counts the records a request carries: one for a single-record `POST`, the
/// members of a batch (its body gunzipped when it came compressed).
fn count_on(wire: &Arc<Wire>) -> ferry_devkit::receiver::OnRequest {
    let wire = Arc::clone(wire);
    Arc::new(move |_, line: &str, body: &[u8]| {
        wire.requests.fetch_add(1, Ordering::Relaxed);
        wire.body_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        let mut unzipped = Vec::new();
        let json: &[u8] = if body.starts_with(&[0x1f, 0x8b]) {
            if flate2::read::GzDecoder::new(body)
                .read_to_end(&mut unzipped)
                .is_err()
            {
                return;
            }
            &unzipped
        } else {
            body
        };
        wire.json_bytes
            .fetch_add(json.len() as u64, Ordering::Relaxed);
        let records = if line.starts_with("POST /api/events/batch ") {
            serde_json::from_slice::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v.get("records").and_then(|r| r.as_array()).map(Vec::len))
                .unwrap_or(0) as u64
        } else {
            u64::from(line.starts_with("POST /api/events "))
        };
        wire.records.fetch_add(records, Ordering::Relaxed);
    })
}

impl Bench {
    /// `n` small records from a SQLite backlog to a receiver whose answers take
    /// `delay`, by `ferry sync --once`; every record must arrive.
    fn deliver(
        &self,
        name: &str,
        delay: Duration,
        remote: &str,
        collections: &str,
        n: u64,
    ) -> Result<Delivery, BoxError> {
        let wire = Arc::new(Wire::default());
        let url = start_delayed_receiver(Duration::from_secs(10), Some(count_on(&wire)), delay)?;
        let site = Site::with_remote(self.root(), name, &url, remote, "", collections)?;
        fill_events(&site, 0, n, false)?;
        let (took, _) = run_ferry(
            &self.ferry,
            &site.config,
            &["sync", "--once"],
            &site.dir.join("ferry.log"),
        )?;
        let delivery = Delivery {
            took,
            records: wire.records.load(Ordering::Relaxed),
            requests: wire.requests.load(Ordering::Relaxed),
            body_bytes: wire.body_bytes.load(Ordering::Relaxed),
            json_bytes: wire.json_bytes.load(Ordering::Relaxed),
        };
        if delivery.records != n {
            return Err(format!("{name}: {} of {n} records arrived", delivery.records).into());
        }
        Ok(delivery)
    }

    /// Figures 10 and 11: a WAN link, one record a request at the default
    /// `max_concurrent`, then batches with the default limits.
    pub(crate) fn wan(&mut self) -> Result<(), BoxError> {
        let rtt_ms = WAN_RTT.as_millis();
        let remote = format!("max_concurrent = {DEFAULT_MAX_CONCURRENT}");
        let n = self.sizes.wan_single_records;
        println!("figure 10: {n} small records, one a request, every answer {rtt_ms} ms");
        let single = self.deliver("fig10", WAN_RTT, &remote, EVENTS, n)?;
        let bound = DEFAULT_MAX_CONCURRENT as f64 / WAN_RTT.as_secs_f64();
        let rate = single.rate();
        self.add(
            10,
            format!("WAN ({rtt_ms} ms per answer), {n} small records, single-record POST, max_concurrent {DEFAULT_MAX_CONCURRENT}"),
            format!(
                "**{rate:.0} records/s** ({:.2} of max_concurrent / RTT = {bound:.0}/s), {:.1} s",
                rate / bound,
                single.took.as_secs_f64()
            ),
            "≥ 0.9 × max_concurrent / RTT",
            verdict(rate >= 0.9 * bound),
        );
        let n = self.sizes.wan_batch_records;
        println!("figure 11: {n} small records in batches, every answer {rtt_ms} ms");
        let batched = self.deliver("fig11", WAN_RTT, &remote, BATCHED_EVENTS, n)?;
        let rate = batched.rate();
        self.add(
            11,
            format!(
                "WAN ({rtt_ms} ms per answer), {n} small records, batches with the default limits"
            ),
            format!(
                "**{rate:.0} records/s**, {} requests, {:.2} s",
                batched.requests,
                batched.took.as_secs_f64()
            ),
            "≥ 10,000 records/s",
            verdict(rate >= 10_000.0),
        );
        Ok(())
    }

    /// Figure 12: batches on loopback, from a SQLite backlog, tracking written.
    pub(crate) fn batched_loopback(&mut self) -> Result<(), BoxError> {
        let n = self.sizes.batch_loopback_records;
        println!("figure 12: {n} small records in batches, loopback");
        let remote = format!("max_concurrent = {DEFAULT_MAX_CONCURRENT}");
        let batched = self.deliver("fig12", Duration::ZERO, &remote, BATCHED_EVENTS, n)?;
        let rate = batched.rate();
        self.add(
            12,
            format!("loopback, {n} small records from a SQLite backlog, batches with the default limits, `sync --once`"),
            format!(
                "**{rate:.0} records/s**, {} requests, {:.2} s",
                batched.requests,
                batched.took.as_secs_f64()
            ),
            "≥ 100,000 records/s",
            verdict(rate >= 100_000.0),
        );
        Ok(())
    }

    /// Figure 13: the same batches with `compression = "gzip"` and without: bytes
    /// of request bodies on the wire.
    pub(crate) fn gzip(&mut self) -> Result<(), BoxError> {
        let n = self.sizes.gzip_records;
        println!("figure 13: {n} small records in batches, with and without gzip");
        let plain_remote = format!("max_concurrent = {DEFAULT_MAX_CONCURRENT}");
        let plain = self.deliver(
            "fig13-plain",
            Duration::ZERO,
            &plain_remote,
            BATCHED_EVENTS,
            n,
        )?;
        let gzip_remote = format!("{plain_remote}\ncompression = \"gzip\"");
        let gzip = self.deliver(
            "fig13-gzip",
            Duration::ZERO,
            &gzip_remote,
            BATCHED_EVENTS,
            n,
        )?;
        if gzip.json_bytes != plain.json_bytes {
            println!(
                "  (the JSON differs: {} bytes plain, {} gunzipped; batches may split differently)",
                plain.json_bytes, gzip.json_bytes
            );
        }
        let ratio = gzip.body_bytes as f64 / plain.body_bytes as f64;
        self.add(
            13,
            format!("bytes of request bodies for {n} small records in batches, gzip / none"),
            format!(
                "**{ratio:.3}** ({:.2} MB gzipped, {:.2} MB plain; {:.0} vs {:.0} records/s)",
                gzip.body_bytes as f64 / 1e6,
                plain.body_bytes as f64 / 1e6,
                gzip.rate(),
                plain.rate()
            ),
            "≤ 0.3",
            verdict(ratio <= 0.3),
        );
        Ok(())
    }
}
