//! The run lock (SPEC §5 "One delivering process"): beside a running `ferry run`, a
//! second `ferry run`, `ferry sync --once`, `ferry migrate` and `ferry check --repair`
//! refuse, naming the daemon's pid; a `kill -9` frees the store; a reload keeps the
//! lock, and moves it when the store moves. The real binary and real processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;
use serde_json::json;

use crate::server::{Faults, TestServer};
use crate::support::{ferry_bin, record, Fixture};
use crate::systemd::{fixture, signal, spawn, Systemd};

/// Runs `ferry --config <config> <args>`; a command still running after `limit` (a
/// second daemon that did not refuse) is killed. Returns the exit code (`None` when
/// killed) and stderr.
fn bounded(config: &Path, args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(ferry_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("FERRY_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry starts");
    let end = Instant::now() + limit;
    while child.try_wait().expect("waiting for ferry").is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("waiting for ferry").is_none() {
        child.kill().expect("SIGKILL");
    }
    let out = child.wait_with_output().expect("ferry's output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ferry run` on `fx`, once it has said READY=1.
fn daemon(fx: &Fixture, systemd: &mut Systemd) -> Child {
    let child = spawn(fx, systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(30))
        .expect("READY=1");
    child
}

/// The store a fixture's config delivers from, as the refusal names it.
fn store_path(fx: &Fixture, backend: Backend) -> String {
    match backend {
        Backend::Sqlite => fx.config.storage.sqlite_path.display().to_string(),
        Backend::Json => fx.config.storage.json_dir.display().to_string(),
    }
}

fn assert_refused(what: &str, (code, err): (Option<i32>, String), holder: u32, store: &str) {
    assert_eq!(code, Some(1), "{what} refuses with exit 1: {err}");
    assert!(
        err.contains(&format!("another ferry (pid {holder}, ferry run)")),
        "{what} names the holder: {err}"
    );
    assert!(err.contains(store), "{what} names the store {store}: {err}");
}

#[test]
fn a_second_ferry_run_refuses_naming_the_first_ones_pid() {
    for backend in [Backend::Sqlite, Backend::Json] {
        let server = TestServer::start(Faults::default());
        let fx = fixture(&server, backend, "");
        let mut systemd = Systemd::listen(fx.dir.path());
        let mut first = daemon(&fx, &mut systemd);
        let second = bounded(&fx.config_path, &["run"], Duration::from_secs(15));
        assert_refused(
            "a second `ferry run`",
            second,
            first.id(),
            &store_path(&fx, backend),
        );
        // The first one is not disturbed.
        fx.open().put("events", record(json!({"id": 1}))).unwrap();
        assert!(
            server.wait_for(Duration::from_secs(10), |s| s
                .keys("/api/events")
                .contains("1")),
            "{backend:?}: the first daemon still delivers"
        );
        signal(&first, libc::SIGTERM);
        assert_eq!(first.wait().unwrap().code(), Some(0));
        assert_eq!(server.duplicates(), 0);
    }
}

#[test]
fn sync_once_migrate_and_repair_refuse_beside_a_running_daemon() {
    for backend in [Backend::Sqlite, Backend::Json] {
        let server = TestServer::start(Faults::default());
        let fx = fixture(&server, backend, "");
        fx.open()
            .put_many(
                "events",
                (0..20).map(|i| record(json!({"id": i}))).collect(),
            )
            .unwrap();
        let mut systemd = Systemd::listen(fx.dir.path());
        let mut first = daemon(&fx, &mut systemd);
        let store = store_path(&fx, backend);
        let limit = Duration::from_secs(60);
        for args in [
            &["sync", "--once"][..],
            &["migrate"],
            &["migrate", "--to", "json"],
            &["migrate", "--to", "sqlite"],
            &["check", "--repair"],
        ] {
            assert_refused(
                &format!("{backend:?}: ferry {}", args.join(" ")),
                bounded(&fx.config_path, args, limit),
                first.id(),
                &store,
            );
        }
        // What sends nothing and changes nothing runs beside it.
        for args in [
            &["sync", "--once", "--dry-run"][..],
            &["migrate", "--dry-run"],
            &["stats"],
            &["check"],
        ] {
            let (code, err) = bounded(&fx.config_path, args, limit);
            assert_eq!(
                code,
                Some(0),
                "{backend:?}: ferry {}: {err}",
                args.join(" ")
            );
        }
        signal(&first, libc::SIGTERM);
        assert_eq!(first.wait().unwrap().code(), Some(0));
        assert_eq!(server.duplicates(), 0);
    }
}

#[test]
fn a_kill_9_of_the_daemon_frees_the_store_for_sync_once() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut first = daemon(&fx, &mut systemd);
    let limit = Duration::from_secs(60);
    assert_refused(
        "sync --once beside the daemon",
        bounded(&fx.config_path, &["sync", "--once"], limit),
        first.id(),
        &store_path(&fx, Backend::Sqlite),
    );
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    // The lock file the dead daemon leaves behind blocks nothing.
    fx.open().put("events", record(json!({"id": 7}))).unwrap();
    let (code, err) = bounded(&fx.config_path, &["sync", "--once"], limit);
    assert_eq!(code, Some(0), "{err}");
    assert!(server.keys("/api/events").contains("7"));
}

#[test]
fn a_reload_keeps_the_lock() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut first = daemon(&fx, &mut systemd);
    let store = store_path(&fx, Backend::Sqlite);
    let limit = Duration::from_secs(60);
    let before = systemd.received.len();
    signal(&first, libc::SIGHUP);
    // During the reload (the old engine stopping, the store reopened) …
    for _ in 0..3 {
        assert_refused(
            "sync --once during a reload",
            bounded(&fx.config_path, &["sync", "--once"], limit),
            first.id(),
            &store,
        );
    }
    // … and after it.
    let end = Instant::now() + Duration::from_secs(20);
    while !systemd.received[before..]
        .iter()
        .any(|(_, m)| m.contains("READY=1"))
    {
        assert!(Instant::now() < end, "READY=1 after the reload");
        systemd.collect(Duration::from_millis(100));
    }
    assert_refused(
        "sync --once after a reload",
        bounded(&fx.config_path, &["sync", "--once"], limit),
        first.id(),
        &store,
    );
    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(0));
}

/// Waits for RELOADING=1 and the READY=1 after it.
fn wait_reloaded(systemd: &mut Systemd) {
    let before = systemd.received.len();
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let messages = &systemd.received[before..];
        if let Some(at) = messages.iter().position(|(_, m)| m.contains("RELOADING=1")) {
            if messages[at..].iter().any(|(_, m)| m.contains("READY=1")) {
                return;
            }
        }
        assert!(Instant::now() < end, "RELOADING=1 then READY=1");
        systemd.collect(Duration::from_millis(100));
    }
}

#[test]
fn a_reload_onto_another_store_moves_the_lock_and_refuses_a_store_held_elsewhere() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    let original = std::fs::read_to_string(&fx.config_path).unwrap();
    let old_config = fx.path("old.toml");
    std::fs::write(&old_config, &original).unwrap();
    let other_config = fx.path("other.toml");
    std::fs::write(
        &other_config,
        original.replace("state/ferry.db", "state/other.db"),
    )
    .unwrap();
    let limit = Duration::from_secs(60);

    let mut systemd = Systemd::listen(fx.dir.path());
    let mut first = daemon(&fx, &mut systemd);
    // Another ferry delivers from the other store.
    std::fs::create_dir_all(fx.path("elsewhere")).unwrap();
    let mut other_systemd = Systemd::listen(&fx.path("elsewhere"));
    let mut other = Command::new(ferry_bin())
        .arg("--config")
        .arg(&other_config)
        .arg("run")
        .env("NOTIFY_SOCKET", &other_systemd.path)
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    other_systemd
        .wait_for("READY=1", Duration::from_secs(30))
        .expect("READY=1 from the other daemon");

    // A reload onto the store the other ferry holds fails: the first keeps its store.
    std::fs::write(&fx.config_path, std::fs::read(&other_config).unwrap()).unwrap();
    signal(&first, libc::SIGHUP);
    wait_reloaded(&mut systemd);
    assert_refused(
        "sync --once on the store kept after a refused reload",
        bounded(&old_config, &["sync", "--once"], limit),
        first.id(),
        &fx.path("state/ferry.db").display().to_string(),
    );
    assert_refused(
        "sync --once on the other store",
        bounded(&other_config, &["sync", "--once"], limit),
        other.id(),
        &fx.path("state/other.db").display().to_string(),
    );

    // Once the other ferry has stopped, the same reload moves the lock.
    signal(&other, libc::SIGTERM);
    assert_eq!(other.wait().unwrap().code(), Some(0));
    signal(&first, libc::SIGHUP);
    wait_reloaded(&mut systemd);
    assert_refused(
        "sync --once on the store the daemon moved to",
        bounded(&other_config, &["sync", "--once"], limit),
        first.id(),
        &fx.path("state/other.db").display().to_string(),
    );
    let (code, err) = bounded(&old_config, &["sync", "--once"], limit);
    assert_eq!(code, Some(0), "the store left behind is free: {err}");

    signal(&first, libc::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(0));
}
