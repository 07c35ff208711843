//! Benchmark: a store of 1,000,000 delivered records. Prints the time to open it, one
//! idle pass (finding work when there is none; target ≤ 20 ms), and `ferry stats`'s
//! queries (target ≤ 1 s). Run with `make bench`.
//!
//! bench_scale [RECORDS]

use std::time::Instant;

use ferry::config::{Config, ProcessEnv};
use ferry::store::{self, DueQuery};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: i64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("ferry.toml");
    std::fs::write(
        &config_path,
        "[storage]\nsqlite_path = \"ferry.db\"\n[[collections]]\nname = \"events\"\nkey = \"id\"\n\
         order_by = \"date\"\nendpoint = \"/api/events\"\n",
    )?;
    let config = Config::load(&config_path, &ProcessEnv)?;
    // ferry creates its schema; the rows go in through SQL, as another program's would.
    drop(store::open(&config)?);
    let build = Instant::now();
    {
        let conn = rusqlite::Connection::open(&config.storage.sqlite_path)?;
        conn.execute_batch("PRAGMA synchronous = OFF; BEGIN;")?;
        {
            let mut record = conn.prepare("INSERT INTO events (key, record) VALUES (?1, ?2)")?;
            let mut tracking = conn.prepare(
                "INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status, attempts, bytes_sent)
                 VALUES ('events', ?1, ?1, '2026-11-22T10:00:00.000Z', 'success', 1, 300)",
            )?;
            for i in 0..count {
                let body = format!(
                    r#"{{"id":{i},"date":"2026-11-22T{:02}:{:02}:{:02}Z","sensor":"capteur-{}","value":{}}}"#,
                    i / 3600 % 24,
                    i / 60 % 60,
                    i % 60,
                    i % 17,
                    i % 1000
                );
                record.execute(rusqlite::params![i, body])?;
                tracking.execute([i])?;
            }
        }
        conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")?;
    }
    let size = std::fs::metadata(&config.storage.sqlite_path)?.len();
    println!(
        "built {count} delivered records ({:.0} MB) in {:.1} s",
        size as f64 / 1e6,
        build.elapsed().as_secs_f64()
    );

    let opened = Instant::now();
    let mut store = store::open(&config)?;
    println!(
        "open the store (schema, tables): {:.1} ms",
        opened.elapsed().as_secs_f64() * 1e3
    );

    let query = DueQuery {
        now: store::now_ms(),
        limit: 250,
        include_changed: false,
        full_scan: false,
    };
    let first = Instant::now();
    let due = store.due("events", &query)?;
    println!(
        "first pass after start (sets the watermark): {:.1} ms, {} due",
        first.elapsed().as_secs_f64() * 1e3,
        due.len()
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        assert!(store.due("events", &query)?.is_empty());
        idle.push(started.elapsed().as_secs_f64() * 1e3);
    }
    idle.sort_by(f64::total_cmp);
    println!(
        "idle pass over {count} delivered records: median {:.3} ms, worst {:.3} ms (target ≤ 20 ms)",
        idle[idle.len() / 2],
        idle[idle.len() - 1]
    );

    let started = Instant::now();
    let summary = store.summary("events")?;
    let troubled = store.troubled("events", 100_000)?;
    println!(
        "ferry stats queries on {count} records: {:.0} ms (target ≤ 1 s); {} synced, {} troubled",
        started.elapsed().as_secs_f64() * 1e3,
        summary.counts.success,
        troubled.len()
    );
    Ok(())
}
