//! `ferry run` as systemd sees it: the real binary, with a `NOTIFY_SOCKET` the test
//! owns (a datagram socket, as systemd's), and real signals.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;
use serde_json::json;

use crate::server::{Faults, TestServer};
use crate::support::{ferry_bin, record, Fixture};

pub(crate) const EVENTS: &str =
    "[[collections]]\nname = \"events\"\nkey = \"id\"\nendpoint = \"/api/events\"\n";

/// systemd's end of `NOTIFY_SOCKET` (devkit/src/notify.rs).
pub(crate) use ferry_devkit::notify::NotifySocket as Systemd;

pub(crate) fn spawn(
    fx: &Fixture,
    systemd: &Systemd,
    watchdog_usec: Option<u64>,
    extra_env: &[(&str, &str)],
) -> Child {
    let mut command = Command::new(ferry_bin());
    command
        .arg("--config")
        .arg(&fx.config_path)
        .arg("run")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .env("FERRY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    match watchdog_usec {
        Some(usec) => command.env("WATCHDOG_USEC", usec.to_string()),
        None => command.env_remove("WATCHDOG_USEC"),
    };
    for (k, v) in extra_env {
        command.env(k, v);
    }
    command.spawn().expect("ferry run starts")
}

pub(crate) fn signal(child: &Child, signal: libc::c_int) {
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

pub(crate) fn fixture(server: &TestServer, backend: Backend, sync: &str) -> Fixture {
    Fixture::with_config(
        backend,
        &format!(
            "[remote]\nurl = \"{}\"\ntimeout = \"1s\"\n[sync]\n{sync}\n",
            server.url
        ),
        EVENTS,
    )
}

#[test]
fn ready_comes_only_after_the_start_up_migration() {
    let server = TestServer::start(Faults::default());
    // Records in the JSON store; the config says SQLite: start-up migrates them.
    let fx = fixture(&server, Backend::Json, "");
    let batch = (0..20_000)
        .map(|i| record(json!({"id": i, "payload": "x".repeat(100)})))
        .collect();
    fx.open().put_many("events", batch).unwrap();
    let text = std::fs::read_to_string(&fx.config_path)
        .unwrap()
        .replace("backend = \"json\"", "backend = \"sqlite\"");
    std::fs::write(&fx.config_path, text).unwrap();
    let mut systemd = Systemd::listen(fx.dir.path());
    let started = Instant::now();
    let mut child = spawn(&fx, &systemd, None, &[]);
    let ready = systemd
        .wait_for("READY=1", Duration::from_secs(60))
        .expect("READY=1");
    // When READY arrives, every record is in the SQLite store already.
    let conn = rusqlite::Connection::open(fx.path("state/ferry.db")).unwrap();
    let migrated: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    eprintln!(
        "READY=1 after {:?}, with {migrated} records migrated",
        ready - started
    );
    assert_eq!(migrated, 20_000);
    let ready_message = systemd
        .received
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap()
        .1
        .clone();
    assert!(ready_message.contains("STATUS="), "{ready_message}");
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn status_lines_and_watchdog_pings_at_half_the_interval() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    fx.open()
        .put_many(
            "events",
            (0..50).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, Some(1_000_000), &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    let since = Instant::now();
    systemd.collect(Duration::from_secs(4));
    let pings = systemd.count_since(since, "WATCHDOG=1");
    eprintln!("{pings} WATCHDOG=1 in 4 s with WatchdogSec=1s");
    assert!((6..=10).contains(&pings), "about two a second: {pings}");
    let statuses: Vec<_> = systemd
        .received
        .iter()
        .flat_map(|(_, m)| {
            m.lines()
                .filter(|l| l.starts_with("STATUS="))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.starts_with("STATUS=50 synced · 0 pending · 0 failed · last push ")),
        "{statuses:?}"
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_wedged_delivery_loop_stops_the_watchdog_pings() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    let mut systemd = Systemd::listen(fx.dir.path());
    // Debug builds carry FERRY_DEBUG_WEDGE; release builds do not.
    let mut child = spawn(
        &fx,
        &systemd,
        Some(1_000_000),
        &[("FERRY_DEBUG_WEDGE", "events")],
    );
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    // Stall limit: remote.timeout (1 s) + 5 s. Pings stop after it and stay stopped.
    systemd.collect(Duration::from_secs(8));
    let quiet_since = Instant::now();
    systemd.collect(Duration::from_secs(3));
    let late_pings = systemd.count_since(quiet_since, "WATCHDOG=1");
    child.kill().unwrap();
    child.wait().unwrap();
    let early = systemd
        .received
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .count();
    eprintln!("{early} pings in all, {late_pings} in the last 3 s");
    assert!(
        early >= 1,
        "pinged while the loop was not yet counted as wedged"
    );
    assert_eq!(late_pings, 0, "no WATCHDOG=1 while the loop is wedged");
}

#[test]
fn an_idle_loop_waiting_for_work_keeps_the_watchdog_fed() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(
        &server,
        Backend::Sqlite,
        "mode = \"periodic\"\ninterval = \"1h\"",
    );
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, Some(1_000_000), &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    systemd.collect(Duration::from_secs(8));
    let since = Instant::now();
    systemd.collect(Duration::from_secs(2));
    assert!(
        systemd.count_since(since, "WATCHDOG=1") >= 3,
        "idle is healthy"
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn sighup_reloads_the_config_and_keeps_the_old_one_if_the_new_is_invalid() {
    let first = TestServer::start(Faults::default());
    let second = TestServer::start(Faults::default());
    let fx = fixture(&first, Backend::Sqlite, "");
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    // Written by another process's hand, through the store (the config file is
    // invalid for part of this test).
    let put = |id: i64| {
        fx.open().put("events", record(json!({"id": id}))).unwrap();
    };
    put(1);
    assert!(first.wait_for(Duration::from_secs(10), |s| s
        .keys("/api/events")
        .contains("1")));

    // An invalid config: logged, the old one kept, no RELOADING.
    let good = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        good.replace("[sync]", "[sync]\nmode = \"sometimes\""),
    )
    .unwrap();
    signal(&child, libc::SIGHUP);
    systemd.collect(Duration::from_secs(1));
    assert!(!systemd
        .received
        .iter()
        .any(|(_, m)| m.contains("RELOADING=1")));
    put(2);
    assert!(
        first.wait_for(Duration::from_secs(10), |s| s
            .keys("/api/events")
            .contains("2")),
        "still running, old config"
    );

    // A valid new config pointing at another server: RELOADING=1, READY=1, in effect.
    std::fs::write(&fx.config_path, good.replace(&first.url, &second.url)).unwrap();
    let before = systemd.received.len();
    signal(&child, libc::SIGHUP);
    let reloading = systemd
        .wait_for("RELOADING=1", Duration::from_secs(20))
        .expect("RELOADING=1");
    let ready_again = systemd.received[before..]
        .iter()
        .any(|(_, m)| m.contains("READY=1"))
        || {
            let end = Instant::now() + Duration::from_secs(20);
            let mut found = false;
            while !found && Instant::now() < end {
                systemd.collect(Duration::from_millis(200));
                found = systemd
                    .received
                    .iter()
                    .any(|(at, m)| *at >= reloading && m.contains("READY=1"));
            }
            found
        };
    assert!(ready_again, "READY=1 after the reload");
    put(3);
    assert!(
        second.wait_for(Duration::from_secs(10), |s| s
            .keys("/api/events")
            .contains("3")),
        "the new config is in effect"
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(first.duplicates() + second.duplicates(), 0);
}

/// The config as the package installs it has no `remote.url`: ferry still starts (so
/// `systemctl enable --now ferry` is green), says in `STATUS=` why it sends nothing,
/// and starts delivering after the URL is written and SIGHUP sent.
#[test]
fn without_remote_url_it_is_ready_and_waits_until_a_reload_sets_it() {
    let server = TestServer::start(Faults::default());
    let fx = Fixture::with_config(Backend::Sqlite, "[remote]\ntimeout = \"1s\"\n", EVENTS);
    fx.open().put("events", record(json!({"id": 1}))).unwrap();
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, Some(1_000_000), &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1 without remote.url");
    let ready = &systemd
        .received
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .unwrap()
        .1;
    let expected = format!(
        "STATUS=not sending: remote.url is not set in {} — records are kept; \
         set it, then systemctl reload ferry",
        fx.config_path.display()
    );
    assert!(ready.lines().any(|l| l == expected), "{ready}");
    // Waiting is healthy: the watchdog is fed, nothing is sent.
    let since = Instant::now();
    systemd.collect(Duration::from_secs(2));
    assert!(systemd.count_since(since, "WATCHDOG=1") >= 3);
    assert_eq!(server.requests(), 0);

    let text = std::fs::read_to_string(&fx.config_path).unwrap().replace(
        "[remote]\n",
        &format!("[remote]\nurl = \"{}\"\n", server.url),
    );
    std::fs::write(&fx.config_path, text).unwrap();
    signal(&child, libc::SIGHUP);
    systemd
        .wait_for("RELOADING=1", Duration::from_secs(10))
        .expect("RELOADING=1");
    assert!(
        server.wait_for(Duration::from_secs(20), |s| s
            .keys("/api/events")
            .contains("1")),
        "the record kept while waiting is delivered after the reload"
    );
    fx.open().put("events", record(json!({"id": 2}))).unwrap();
    assert!(server.wait_for(Duration::from_secs(10), |s| s
        .keys("/api/events")
        .contains("2")));
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(server.duplicates(), 0);
}

#[test]
fn sigterm_during_a_push_sends_stopping_and_exits_0_in_time() {
    let server = TestServer::start(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let fx = fixture(&server, Backend::Sqlite, "");
    fx.open()
        .put_many(
            "events",
            (0..100).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    assert!(server.wait_for(Duration::from_secs(10), |s| s.requests() >= 8));
    let asked = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(systemd
        .wait_for("STOPPING=1", Duration::from_secs(1))
        .is_some());
    // Nothing lost: a restart delivers the rest, none twice.
    let mut child = spawn(&fx, &systemd, None, &[]);
    assert!(
        server.wait_for(Duration::from_secs(60), |s| s.keys("/api/events").len()
            == 100)
    );
    signal(&child, libc::SIGTERM);
    child.wait().unwrap();
    assert_eq!(server.duplicates(), 0);
}

/// The structured fields journald gets. tracing-journald writes each event field as a
/// journal field named in upper case (ferry turns its `F` prefix off), so checking the
/// fields of the events ferry emits checks `COLLECTION=`, `LOCAL_ID=`, `REMOTE_ID=` and
/// `HTTP_STATUS=` (there is no journald on the test machines to read them back from).
#[test]
fn failures_and_deliveries_carry_the_journal_fields() {
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Default)]
    struct Fields(Vec<(String, String)>);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_uppercase(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0
                .push((field.name().to_uppercase(), value.to_string()));
        }
    }
    type Captured = Arc<Mutex<Vec<(tracing::Level, Vec<(String, String)>)>>>;
    struct Capture(Captured);
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            self.0
                .lock()
                .unwrap()
                .push((*event.metadata().level(), fields.0));
        }
    }

    let server = TestServer::start(Faults {
        per_key: [("2".to_string(), crate::server::Fault::Status(422))]
            .into_iter()
            .collect(),
        ..Faults::default()
    });
    let fx = fixture(&server, Backend::Sqlite, "");
    fx.open()
        .put_many(
            "events",
            (1..=3).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&events)));
    tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = ferry::sync::SharedStore::new(ferry::store::open(&fx.config).unwrap());
        let engine =
            std::sync::Arc::new(ferry::sync::Engine::new(fx.config.clone(), store).unwrap());
        let (_stop, stop_rx) = tokio::sync::watch::channel(false);
        runtime.block_on(engine.once(None, stop_rx)).unwrap();
    });
    let events = events.lock().unwrap();
    let has = |level: tracing::Level, wanted: &[(&str, &str)]| {
        events.iter().any(|(l, fields)| {
            *l == level
                && wanted
                    .iter()
                    .all(|(k, v)| fields.iter().any(|(fk, fv)| fk == k && fv == v))
        })
    };
    assert!(
        has(
            tracing::Level::WARN,
            &[
                ("COLLECTION", "events"),
                ("LOCAL_ID", "2"),
                ("HTTP_STATUS", "422")
            ]
        ),
        "{events:?}"
    );
    assert!(
        has(
            tracing::Level::DEBUG,
            &[
                ("COLLECTION", "events"),
                ("LOCAL_ID", "1"),
                ("HTTP_STATUS", "201")
            ]
        ),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|(_, f)| f.iter().any(|(k, _)| k == "REMOTE_ID")),
        "{events:?}"
    );
    let text = format!("{events:?}");
    assert!(!text.contains("Bearer"), "no token in logs");
}

/// `ferry run` on `fx` to its end, with its own NOTIFY_SOCKET: exit code, stderr, and
/// whether it said READY=1.
fn run_to_end(fx: &Fixture) -> (Option<i32>, String, bool) {
    let mut systemd = Systemd::listen(&fx.path("state"));
    let child = Command::new(ferry_bin())
        .arg("--config")
        .arg(&fx.config_path)
        .arg("run")
        .env("NOTIFY_SOCKET", &systemd.path)
        .env_remove("JOURNAL_STREAM")
        .env("FERRY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    systemd.collect(Duration::from_millis(300));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        systemd.received.iter().any(|(_, m)| m.contains("READY=1")),
    )
}

#[test]
fn after_an_unclean_stop_a_damaged_store_is_refused_before_ready() {
    let server = TestServer::start(Faults::default());
    let fx = fixture(&server, Backend::Sqlite, "");
    let filler = "y".repeat(400);
    fx.open()
        .put_many(
            "events",
            (0..5_000)
                .map(|i| record(json!({"id": i, "fill": filler})))
                .collect(),
        )
        .unwrap();
    let db = fx.path("state/ferry.db");
    let lock = fx.path("state/ferry.db.ferry-lock");
    let state = || std::fs::read_to_string(&lock).unwrap_or_default();
    crate::support::checkpoint(&db);
    // A clean stop says so in the run lock: the next start need not check.
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    assert!(state().contains("\nstate running\n"), "{}", state());
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(state().contains("\nstate stopped\n"), "{}", state());

    // A crash (kill -9) leaves it saying running; then pages in the middle go bad.
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(state().contains("\nstate running\n"), "{}", state());
    crate::support::checkpoint(&db);
    crate::support::overwrite_middle_pages(&db, 8, 0xA5);
    let (code, err, ready) = run_to_end(&fx);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("ferry did not stop cleanly"), "{err}");
    assert!(err.contains("the sqlite store is damaged"), "{err}");
    assert!(err.contains("ferry check --repair"), "{err}");
    assert!(!ready, "no READY on a damaged store");
    // Refused, it leaves the state as it found it: the next start checks again.
    assert!(state().contains("\nstate running\n"), "{}", state());

    // The marker of a crash left by an earlier ferry (before the run lock, after an
    // upgrade) counts as well.
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(fx.path("state/ferry.db.ferry-running"), "1234\n").unwrap();
    let (code, err, ready) = run_to_end(&fx);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the sqlite store is damaged"), "{err}");
    assert!(!ready);

    // No sign of a crash, but check_on_start = "always": refused all the same.
    std::fs::remove_file(fx.path("state/ferry.db.ferry-running")).unwrap();
    std::fs::remove_file(&lock).unwrap();
    let good = std::fs::read_to_string(&fx.config_path).unwrap();
    let always = good.replace("[storage]\n", "[storage]\ncheck_on_start = \"always\"\n");
    std::fs::write(&fx.config_path, always).unwrap();
    let (code, err, _) = run_to_end(&fx);
    assert_eq!(code, Some(1));
    assert!(err.contains("the sqlite store is damaged"), "{err}");

    // After a crash, `ferry check --repair` leaves a sound store, and says so in the
    // run lock: the next start runs without finding the old damage.
    std::fs::write(&fx.config_path, &good).unwrap();
    std::fs::write(fx.path("state/ferry.db.ferry-running"), "1234\n").unwrap();
    let out = fx.ferry(&["check", "--repair"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state().contains("\nstate stopped\n"), "{}", state());
    assert!(!fx.path("state/ferry.db.ferry-running").exists());
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, None, &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1 on the repaired store");
    signal(&child, libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A service manager that stops reading NOTIFY_SOCKET fills its queue; ferry must not
/// block on it: deliveries go on with a watchdog pinging every 50 ms and STATUS lines
/// to say, and SIGTERM still stops it at once.
#[test]
fn a_notify_socket_nobody_reads_does_not_freeze_the_daemon() {
    let server = TestServer::start(Faults {
        delay: Duration::from_millis(20),
        ..Faults::default()
    });
    let fx = fixture(&server, Backend::Sqlite, "mode = \"continuous\"");
    fx.open()
        .put_many(
            "events",
            (0..200).map(|i| record(json!({"id": i}))).collect(),
        )
        .unwrap();
    let mut systemd = Systemd::listen(fx.dir.path());
    let mut child = spawn(&fx, &systemd, Some(100_000), &[]);
    systemd
        .wait_for("READY=1", Duration::from_secs(20))
        .expect("READY=1");
    // From here on nobody reads: the socket's queue (10 datagrams) fills in 0.5 s.
    assert!(
        server.wait_for(Duration::from_secs(30), |s| s.keys("/api/events").len()
            == 200),
        "deliveries stopped: {} of 200",
        server.keys("/api/events").len()
    );
    let asked = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
}
