//! The real binary: `kill -9` mid-load loses nothing and duplicates nothing (both
//! storages), a config error exits 78 with file:line:col, SIGTERM stops cleanly,
//! SIGHUP reloads the tokens.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::on_both;
use crate::support::{client, key, rows, send, Db, Kind, Process};

const CLIENTS: usize = 24;
const RECORDS: usize = 60;

async fn kill_9_mid_load_loses_nothing(kind: Kind) {
    let db = Db::of(kind).await;
    let config = db.config_file("");
    let dir = db.dir.path().to_path_buf();
    let first = {
        let (config, dir) = (config.clone(), dir.clone());
        tokio::task::spawn_blocking(move || Process::start(&config, &dir, "0"))
            .await
            .expect("start")
    };
    let url = Arc::new(RwLock::new(first.url.clone()));
    let answered = Arc::new(Mutex::new(HashSet::<String>::new()));
    let c = client();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        let (url, answered, c) = (Arc::clone(&url), Arc::clone(&answered), c.clone());
        tasks.push(tokio::spawn(async move {
            let device = format!("box{n}");
            let mut r = 0;
            while r < RECORDS {
                // Half the clients send batches of 5, half single records.
                let batch = n % 2 == 0;
                let count = if batch { 5.min(RECORDS - r) } else { 1 };
                let members: Vec<_> = (r..r + count)
                    .map(|j| {
                        let k = key(&device, "events", &format!("e{j}"), "v1");
                        (format!("e{j}"), k, json!({"device_id": device, "n": j}))
                    })
                    .collect();
                loop {
                    assert!(Instant::now() < deadline, "{device}: not delivered in time");
                    let u = url.read().map(|u| u.clone()).unwrap_or_default();
                    let request = if batch {
                        let records: Vec<_> = members
                            .iter()
                            .map(|(k, ik, body)| json!({"key": k, "op": "create", "idempotency_key": ik, "version": "v1", "record": body}))
                            .collect();
                        c.post(format!("{u}/api/events/batch"))
                            .body(json!({"device_id": device, "collection": "events", "records": records}).to_string())
                    } else {
                        c.post(format!("{u}/api/events"))
                            .header("idempotency-key", &members[0].1)
                            .body(members[0].2.to_string())
                    };
                    let Ok(response) = request.timeout(Duration::from_secs(5)).send().await else {
                        // Killed: the same request again once it is back.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let status = response.status().as_u16();
                    let Ok(text) = response.text().await else { continue };
                    let ok = if batch {
                        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        status == 200
                            && body["results"]
                                .as_array()
                                .is_some_and(|rs| rs.len() == count && rs.iter().all(|r| r["status"].as_u64().is_some_and(|s| (200..300).contains(&s))))
                    } else {
                        (200..300).contains(&status)
                    };
                    if ok {
                        let mut a = answered.lock().expect("lock");
                        for (k, _, _) in &members {
                            a.insert(format!("{device}/{k}"));
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r += count;
            }
        }));
    }
    // Two kills while the clients write: once a fifth of the records is answered, and
    // once half is (whatever the machine's speed).
    let mut process = first;
    for (round, fraction) in [(1, 0.2), (2, 0.5)] {
        let started = Instant::now();
        loop {
            let done = answered.lock().map(|a| a.len()).unwrap_or(0);
            if done as f64 >= fraction * (CLIENTS * RECORDS) as f64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the load stalled at {done}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let before = answered.lock().map(|a| a.len()).unwrap_or(0);
        process.signal(libc::SIGKILL);
        process.wait(Duration::from_secs(10));
        let (config, dir) = (config.clone(), dir.clone());
        process =
            tokio::task::spawn_blocking(move || Process::start(&config, &dir, &round.to_string()))
                .await
                .expect("restart");
        *url.write().expect("lock") = process.url.clone();
        assert!(
            before < CLIENTS * RECORDS,
            "the load ended before kill {round}: make it longer"
        );
    }
    for t in tasks {
        t.await.expect("a client");
    }
    let u = process.url.clone();
    let all = rows(&c, &u, "events").await;
    let mut seen = BTreeMap::new();
    for row in &all {
        let id = format!(
            "{}/{}",
            row["device"].as_str().unwrap_or(""),
            row["key"].as_str().unwrap_or("")
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    let answered = answered.lock().expect("lock").clone();
    assert_eq!(answered.len(), CLIENTS * RECORDS);
    let missing: Vec<_> = answered.iter().filter(|k| !seen.contains_key(*k)).collect();
    assert!(missing.is_empty(), "answered but not stored: {missing:?}");
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "stored twice: {duplicated:?}");
    assert_eq!(all.len(), CLIENTS * RECORDS);
    process.signal(libc::SIGTERM);
    assert_eq!(process.wait(Duration::from_secs(15)), Some(0));
}
on_both!(kill_9_mid_load_loses_nothing);

#[test]
fn a_config_error_exits_78_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("receiver.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\n\n[[collections]]\nname = \"downloads\"\nbounds = { progress = [100, 0] }\nmax_updates = 4\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-receiver"))
        .args(["--config"])
        .arg(&path)
        .args(["config", "check"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("receiver.toml:6:1"), "{text}");
    assert!(text.contains("max_updates"), "{text}");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-receiver"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .output()
        .expect("run");
    assert_eq!(run.status.code(), Some(78));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_and_sighup_reloads_the_tokens() {
    crate::support::bounded(async {
        let db = Db::sqlite().await;
        let tokens = db.dir.path().join("tokens");
        std::fs::write(&tokens, "").expect("write");
        let config = db.config_file(&format!("tokens_file = \"{}\"", tokens.display()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-receiver"))
            .arg("--config")
            .arg(&config)
            .args(["token", "new", "box1"])
            .output()
            .expect("token new");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(token.len(), 64);
        // Started before the token existed? No: start with an empty file, then add.
        std::fs::write(&tokens, "").expect("empty again");
        let mut process = Process::start(&config, db.dir.path(), "hup");
        let c = client();
        let u = process.url.clone();
        let attempt = || {
            send(
                c.post(format!("{u}/api/things"))
                    .bearer_auth(&token)
                    .header("idempotency-key", key("box1", "things", "1", "v"))
                    .body("{}"),
            )
        };
        assert_eq!(attempt().await.status, 401);
        ferry_receiver::tokens::append(&tokens, "box1", &token).expect("append");
        process.signal(libc::SIGHUP);
        let started = Instant::now();
        loop {
            let status = attempt().await.status;
            if status == 201 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "SIGHUP did not reload the tokens"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stats = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-receiver"))
            .arg("--config")
            .arg(&config)
            .arg("stats")
            .output()
            .expect("stats");
        let text = String::from_utf8_lossy(&stats.stdout);
        assert!(text.contains("things") && text.contains("box1"), "{text}");
        process.signal(libc::SIGTERM);
        assert_eq!(process.wait(Duration::from_secs(15)), Some(0));
    })
    .await
}
