//! `ferry backup` killed part-way (`kill -9`, a power cut) leaves its temp file
//! behind; the next backup removes what backups whose process is gone left, and
//! nothing else.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;

use crate::support::{ferry_bin, Fixture};

fn hidden_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn a_backup_removes_the_temp_files_of_killed_backups() {
    let fx = Fixture::new(Backend::Sqlite);
    drop(fx.open());
    {
        // Enough rows that a backup takes a while.
        let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let note = "x".repeat(300);
        for i in 0..100_000i64 {
            conn.execute(
                "INSERT INTO events (key, record) VALUES (?1, ?2)",
                rusqlite::params![i, format!("{{\"id\":{i},\"note\":\"{note}\"}}")],
            )
            .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    let copies = fx.path("copies");
    std::fs::create_dir_all(&copies).unwrap();
    let mut killed_with_a_temp = 0;
    for k in 0..3 {
        let dest = copies.join(format!("k{k}.db"));
        let mut child = Command::new(ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .arg("backup")
            .arg(&dest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed once its temp file is being written.
        let deadline = Instant::now() + Duration::from_secs(60);
        let name = format!(".k{k}.db.");
        while !hidden_entries(&copies).iter().any(|n| n.starts_with(&name))
            && Instant::now() < deadline
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(20));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        child.wait().unwrap();
        if running && !dest.exists() {
            killed_with_a_temp += 1;
        }
    }
    // (each backup already removed what the one killed before it left)
    let left = hidden_entries(&copies);
    eprintln!("after 3 kills: {left:?}");
    assert!(
        killed_with_a_temp > 0 && !left.is_empty(),
        "no backup was killed while writing its temp file: the test proves nothing"
    );
    let out = fx.ferry(&["backup", copies.join("whole.db").to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        hidden_entries(&copies),
        Vec::<String>::new(),
        "what killed backups left is still there"
    );
    assert!(copies.join("whole.db").exists() && copies.join("whole.db.txt").exists());
}

/// JSON backups go through a temp folder: one left by a process that is gone is
/// removed; one of a process that still runs (a backup in progress) is not.
#[test]
fn a_json_backup_removes_dead_backups_temp_folders_and_keeps_live_ones() {
    let fx = Fixture::new(Backend::Json);
    let mut store = fx.open();
    store
        .put(
            "events",
            crate::support::record(serde_json::json!({"id": 1, "v": "a"})),
        )
        .unwrap();
    drop(store);
    let copies = fx.path("copies");
    std::fs::create_dir_all(&copies).unwrap();
    // A pid that is gone: a process that ran and was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let dead = copies.join(format!(".old.ferry-tmp-{dead_pid}"));
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(dead.join("events.json"), "{}").unwrap();
    let dead_note = copies.join(format!(".old.txt.ferry-tmp-{dead_pid}"));
    std::fs::write(&dead_note, "half a note").unwrap();
    let live = copies.join(format!(".busy.ferry-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let out = fx.ferry(&["backup", copies.join("new").to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dead.exists(), "a dead backup's temp folder is left");
    assert!(!dead_note.exists(), "a dead backup's temp note is left");
    assert!(live.exists(), "a running backup's temp folder was removed");
    assert!(copies.join("new/events.json").exists());
    assert!(copies.join("new/BACKUP.txt").exists());
    assert_eq!(
        hidden_entries(&copies),
        vec![live.file_name().unwrap().to_string_lossy().into_owned()]
    );
}
