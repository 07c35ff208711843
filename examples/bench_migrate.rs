//! Benchmark: the start-up migration of 100,000 records JSON → SQLite (target ≤ 2 s on
//! a 2-core machine). Prints the figure; run with `make bench`.
//!
//! bench_migrate [RECORDS]

use std::time::Instant;

use ferry::config::{Backend, Config, ProcessEnv};
use ferry::store::{self, migrate::migrate, Key, Status, Tracking};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("ferry.toml");
    std::fs::write(
        &config_path,
        "[storage]\nbackend = \"json\"\nsqlite_path = \"ferry.db\"\njson_dir = \"json\"\nbackups_dir = \"backups\"\n\
         [[collections]]\nname = \"events\"\nkey = \"id\"\nupdated_at = \"updated_at\"\nendpoint = \"/api/events\"\n",
    )?;
    let config = Config::load(&config_path, &ProcessEnv)?;
    {
        let mut json_store = store::open(&config)?;
        let records = (0..count)
            .map(|i| {
                let value = json!({
                    "id": i, "sensor": format!("capteur-{}", i % 17), "kind": "motion",
                    "value": i as f64 * 0.25, "room": "salon", "battery": 87,
                    "note": "porte d'entrée ouverte, détection confirmée par la caméra 2",
                    "updated_at": format!("2026-11-22T10:{:02}:{:02}.{:03}Z", i / 60000 % 60, i / 1000 % 60, i % 1000)
                });
                serde_json::from_value(value).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        json_store.put_many("events", records)?;
        let tracking: Vec<Tracking> = (0..count)
            .step_by(2)
            .map(|i| {
                let mut row = Tracking::new("events", Key::Int(i as i64), 1_700_000_000_000);
                row.status = Status::Success;
                row.remote_id = Some(Key::Int(i as i64 + 1));
                row
            })
            .collect();
        json_store.write_tracking(&tracking)?;
    }
    let size: u64 = std::fs::read_dir(&config.storage.json_dir)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut sqlite = config.clone();
    sqlite.storage.backend = Backend::Sqlite;
    let started = Instant::now();
    let reports = migrate(&sqlite, Backend::Sqlite, false)?;
    let took = started.elapsed();
    for report in &reports {
        println!("{report}");
    }
    println!(
        "migration json→sqlite of {count} records ({:.1} MB of JSON, {} tracking rows): {:.2} s (target ≤ 2 s)",
        size as f64 / 1e6,
        count.div_ceil(2),
        took.as_secs_f64()
    );
    Ok(())
}
