//! JSON files shared with another program, as seed 000's service shares
//! `active_downloads.json`: it locks the data file itself (Python's `fcntl.flock` or
//! `fcntl.lockf`), keeps it open, owns it, and writes it in place. ferry must wait for
//! its locks, never lose its writes, keep the file's inode, owner and mode, and stay
//! crash-safe. The other program is a real `python3` process; ferry is the real binary.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::config::Backend;
use serde_json::{json, Map, Value};

use crate::support::Fixture;

const DOWNLOADS: &str = r#"
[[collections]]
name = "downloads"
key = "id"
updated_at = "updated_at"
endpoint = "/api/downloads"
"#;

fn fixture() -> Fixture {
    let fx = Fixture::with_collections(Backend::Json, DOWNLOADS);
    std::fs::create_dir_all(fx.path("state/json")).unwrap();
    fx
}

fn data_file(fx: &Fixture) -> PathBuf {
    fx.path("state/json/downloads.json")
}

fn put(fx: &Fixture, record: Value) -> std::process::Output {
    let out = fx.ferry(&["put", "downloads"], Some(record.to_string().as_bytes()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "ferry put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_object(path: &Path) -> Map<String, Value> {
    let bytes = std::fs::read(path).unwrap();
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => map,
        other => panic!(
            "{} is not a JSON object ({other:?}): {:?}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        ),
    }
}

/// A python3 process running `script` with `args`, and its stdout for its
/// "I am ready" lines.
struct Python {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Python {
    fn start(script: &str, args: &[&str]) -> Python {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (it is installed here)");
        let out = BufReader::new(child.stdout.take().unwrap());
        Python { child, out }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    fn expect(&mut self, what: &str) {
        assert_eq!(self.line(), what, "python3 said something else");
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "python3 failed: {status}");
        rest
    }
}

/// Seed 000's way of writing: lock the data file, read it, add a record, write it
/// back in place. `how` is `flock` or `lockf`. It holds the lock for a second
/// between saying "locked" and writing.
const SEED_WRITER: &str = r#"
import fcntl, json, os, sys, time
path, how = sys.argv[1], sys.argv[2]
with open(path, 'r+') as f:
    if how == 'flock':
        fcntl.flock(f, fcntl.LOCK_EX)
    else:
        fcntl.lockf(f, fcntl.LOCK_EX)
    print('locked', flush=True)
    time.sleep(1.0)
    f.seek(0)
    data = json.load(f)
    data['py1'] = {'id': 'py1', 'status': 'downloading', 'progress': 3}
    f.seek(0)
    f.truncate()
    json.dump(data, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
"#;

fn ferry_waits_for_the_other_programs_lock_and_keeps_its_write(how: &str) {
    let fx = fixture();
    put(
        &fx,
        json!({"id": "d1", "status": "downloading", "progress": 10}),
    );
    let path = data_file(&fx);
    let mut python = Python::start(SEED_WRITER, &[path.to_str().unwrap(), how]);
    python.expect("locked");
    let started = Instant::now();
    put(
        &fx,
        json!({"id": "d2", "status": "downloading", "progress": 0}),
    );
    let waited = started.elapsed();
    python.finish();
    assert!(
        waited >= Duration::from_millis(800),
        "ferry wrote while the other program held its {how} lock ({waited:?})"
    );
    let object = read_object(&path);
    let keys: Vec<&String> = object.keys().collect();
    assert!(
        object.contains_key("py1"),
        "the other program's write was lost: {keys:?}"
    );
    assert!(
        object.contains_key("d1") && object.contains_key("d2"),
        "{keys:?}"
    );
}

#[test]
fn ferry_waits_for_a_python_flock_on_the_data_file_and_keeps_its_write() {
    ferry_waits_for_the_other_programs_lock_and_keeps_its_write("flock");
}

#[test]
fn ferry_waits_for_a_python_lockf_on_the_data_file_and_keeps_its_write() {
    ferry_waits_for_the_other_programs_lock_and_keeps_its_write("lockf");
}

/// A reader waits too: it never sees the half-written file the other program holds
/// its lock over.
#[test]
fn a_reader_waits_while_the_other_program_writes_under_its_lock() {
    for how in ["flock", "lockf"] {
        let fx = fixture();
        put(
            &fx,
            json!({"id": "d1", "status": "downloading", "progress": 10}),
        );
        let path = data_file(&fx);
        let half_writer = r#"
import fcntl, os, sys, time
path, how = sys.argv[1], sys.argv[2]
with open(path, 'r+') as f:
    if how == 'flock':
        fcntl.flock(f, fcntl.LOCK_EX)
    else:
        fcntl.lockf(f, fcntl.LOCK_EX)
    content = f.read()
    f.seek(0)
    f.truncate()
    f.write(content[: len(content) // 2])
    f.flush()
    print('locked', flush=True)
    time.sleep(1.0)
    f.write(content[len(content) // 2 :])
    f.flush()
"#;
        let mut python = Python::start(half_writer, &[path.to_str().unwrap(), how]);
        python.expect("locked");
        let out = fx.ferry(&["get", "downloads", "d1"], None);
        python.finish();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{how}: ferry read the file while the other program was writing it: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"d1\""));
    }
}

/// Seed 000's service runs as its own user, with a file mode its workers share.
#[test]
fn a_write_keeps_the_files_inode_owner_and_mode() {
    let fx = fixture();
    put(
        &fx,
        json!({"id": "d1", "status": "downloading", "progress": 10}),
    );
    let path = data_file(&fx);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
    // As root (as here): another owner, as the seed service's files have.
    let foreign = std::os::unix::fs::chown(&path, Some(65534), Some(65534)).is_ok();
    let before = std::fs::metadata(&path).unwrap();
    put(
        &fx,
        json!({"id": "d2", "status": "downloading", "progress": 0}),
    );
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(after.ino(), before.ino(), "the file was replaced");
    assert_eq!(after.mode() & 0o7777, 0o664, "mode {:o}", after.mode());
    if foreign {
        assert_eq!((after.uid(), after.gid()), (65534, 65534), "owner changed");
    } else {
        eprintln!("not root: the owner part of this test was skipped");
    }
    let object = read_object(&path);
    assert!(object.contains_key("d1") && object.contains_key("d2"));
}

/// A program that opened the file before ferry's write reads ferry's write through
/// the descriptor it already has.
#[test]
fn a_program_holding_the_file_open_sees_ferrys_write() {
    let fx = fixture();
    put(
        &fx,
        json!({"id": "d1", "status": "downloading", "progress": 10}),
    );
    let path = data_file(&fx);
    let holder = r#"
import json, sys
with open(sys.argv[1]) as f:
    print('open', flush=True)
    sys.stdin.readline()
    f.seek(0)
    print(sorted(json.load(f).keys()), flush=True)
"#;
    let mut python = Python::start(holder, &[path.to_str().unwrap()]);
    python.expect("open");
    put(
        &fx,
        json!({"id": "d2", "status": "downloading", "progress": 0}),
    );
    python.say("go");
    let seen = python.finish();
    assert_eq!(
        seen.trim(),
        "['d1', 'd2']",
        "what the open descriptor reads"
    );
}

/// FNV-1a 64, as the journal header records the content it replaces.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The states a crash leaves between the steps of an in-place write, made by hand
/// (the format is the one documented in `src/store/atomic.rs`): ferry finishes the
/// write when it opens the file again, or keeps what another program wrote since.
#[test]
fn a_write_interrupted_between_its_steps_is_finished_when_ferry_opens_the_file() {
    let old = serde_json::to_vec_pretty(&json!({"d1": {"id": "d1", "progress": 10}})).unwrap();
    let new = serde_json::to_vec_pretty(
        &json!({"d1": {"id": "d1", "progress": 20}, "d2": {"id": "d2", "progress": 0}}),
    )
    .unwrap();
    let journal = {
        let mut j = format!(
            "ferry-journal 1 before={}:{:016x} length={}\n",
            old.len(),
            fnv1a(&old),
            new.len()
        )
        .into_bytes();
        j.extend_from_slice(&new);
        j
    };
    let poisoned = |content: &[u8]| {
        let mut torn = content.to_vec();
        torn[0] = 0;
        torn
    };
    let torn_body = {
        let mut torn = old.clone();
        torn.resize(torn.len().max(new.len()), b' ');
        torn[..new.len() / 2].copy_from_slice(&new[..new.len() / 2]);
        torn[0] = 0;
        torn
    };
    let theirs = serde_json::to_vec(&json!({"d9": {"id": "d9"}})).unwrap();
    // (what the file holds after the crash, with the journal beside it, the records
    // ferry must read)
    let cases: [(&str, Vec<u8>, &[&str]); 5] = [
        (
            "journal written, file untouched",
            old.clone(),
            &["d1", "d2"],
        ),
        ("first byte poisoned", poisoned(&old), &["d1", "d2"]),
        ("body half written", torn_body, &["d1", "d2"]),
        (
            "body written, first byte not",
            poisoned(&new),
            &["d1", "d2"],
        ),
        ("another program wrote after the crash", theirs, &["d9"]),
    ];
    for (case, file, expected) in cases {
        let fx = fixture();
        let path = data_file(&fx);
        std::fs::write(&path, &file).unwrap();
        std::fs::write(fx.path("state/json/downloads.json.journal"), &journal).unwrap();
        let out = fx.ferry(&["list", "downloads"], None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let object = read_object(&path);
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, expected, "{case}");
        if expected.contains(&"d2") {
            assert_eq!(std::fs::read(&path).unwrap(), new, "{case}");
        }
        assert!(
            !fx.path("state/json/downloads.json.journal").exists(),
            "{case}: the journal is gone"
        );
    }
}

/// `kill -9` of `ferry put` at random moments of its write, over and over: after
/// each, once ferry has opened the store again, the file parses and holds the
/// records before that put, or those plus its record.
#[test]
fn kill_9_of_a_put_loop_leaves_the_old_or_the_new_content() {
    let fx = fixture();
    // A file large enough that a write takes a while (about 2 MB), written whole
    // (a put per record would rewrite it 2000 times).
    let filler: Map<String, Value> = (0..2000)
        .map(|i| {
            let key = format!("f{i:05}");
            let record = json!({"id": key, "status": "seeding", "note": "x".repeat(900)});
            (key, record)
        })
        .collect();
    std::fs::write(data_file(&fx), serde_json::to_vec_pretty(&filler).unwrap()).unwrap();
    let path = data_file(&fx);
    let journal = fx.path("state/json/downloads.json.journal");
    let spawn_put = |i: u32| {
        let mut child = Command::new(crate::support::ferry_bin())
            .arg("--config")
            .arg(&fx.config_path)
            .args(["put", "downloads"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let record = json!({"id": format!("k{i:03}"), "status": "downloading", "progress": i});
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(record.to_string().as_bytes()).unwrap();
        drop(stdin);
        child
    };
    // How long one whole put takes, to kill inside it.
    let started = Instant::now();
    assert!(spawn_put(999).wait().unwrap().success());
    let whole = started.elapsed().as_micros() as u64;
    let mut count = read_object(&path).len();
    let mut rng = ferry_devkit::rng::Rng::new(0x2545_f491_4f6c_dd1d);
    let (mut mid_write, mut killed) = (0, 0);
    for i in 0..30 {
        let draw = rng.next_u64();
        let mut child = spawn_put(i);
        if i % 2 == 0 {
            // Anywhere in the command's life.
            std::thread::sleep(Duration::from_micros(draw % whole.max(1)));
        } else {
            // Inside the write: once its journal is there, up to 3 ms later.
            let deadline = Instant::now() + Duration::from_micros(whole * 3);
            while !journal.exists()
                && Instant::now() < deadline
                && child.try_wait().unwrap().is_none()
            {
                std::thread::sleep(Duration::from_micros(50));
            }
            std::thread::sleep(Duration::from_micros(draw % 3000));
        }
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        if journal.exists() {
            mid_write += 1;
        }
        // ferry opens the store again (this finishes an interrupted write).
        let mut store = fx.open();
        let records = store.counts("downloads").unwrap().records as usize;
        drop(store);
        let on_disk = read_object(&path).len();
        assert_eq!(records, on_disk);
        assert!(
            on_disk == count || on_disk == count + 1,
            "kill {i}: {on_disk} records, expected {count} or {}",
            count + 1
        );
        assert!(!journal.exists(), "kill {i}: the journal was not finished");
        count = on_disk;
    }
    eprintln!(
        "30 puts, {killed} killed while running, {mid_write} of them mid-write (journal left)"
    );
    assert!(
        killed > 0,
        "no put was killed while it ran: the test proves nothing"
    );
}

/// ferry's in-place writes keep the inode and often the length: a reader that
/// cached the file's parse (the daemon) must still see every write, however close
/// together.
#[test]
fn in_place_writes_are_seen_by_a_reader_that_cached_the_file() {
    let fx = fixture();
    put(
        &fx,
        json!({"id": "d1", "status": "downloading", "progress": 10}),
    );
    let mut reader = fx.open();
    let mut writer = fx.open();
    let mut token = reader.change_token().unwrap();
    for progress in 11..40 {
        let record = crate::support::record(
            json!({"id": "d1", "status": "downloading", "progress": progress}),
        );
        writer.put("downloads", record).unwrap();
        let seen = reader
            .get("downloads", &ferry::store::Key::parse("d1"))
            .unwrap()
            .unwrap();
        assert_eq!(seen["progress"], json!(progress), "a stale cached parse");
        let next = reader.change_token().unwrap();
        assert_ne!(
            next, token,
            "progress {progress}: the write was not seen as a change"
        );
        token = next;
    }
}

/// A tmpfs mounted on a folder for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where mounting is not allowed (not root).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status();
        matches!(mounted, Ok(s) if s.success()).then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `dir/filler`, then frees `pages` 4 KiB pages.
fn fill_leaving(dir: &Path, pages: u64) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![7u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.flush();
    let len = std::fs::metadata(&filler).unwrap().len();
    file.set_len(len.saturating_sub(pages * 4096)).unwrap();
    filler
}

/// A full disk fails an in-place write before the file is touched, and says so: the
/// disk is full, which file, nothing lost. Both when even the journal does not fit,
/// and when the journal fits but the file's growth does not.
#[test]
fn a_full_disk_fails_an_in_place_write_and_keeps_the_old_content() {
    let fx = fixture();
    let json = fx.path("state/json");
    let Some(_tmpfs) = Tmpfs::mount(&json, "2m") else {
        eprintln!("cannot mount a tmpfs here (needs root): test skipped");
        return;
    };
    // About 40 KiB of records.
    let records: String = (0..40)
        .map(|i| {
            format!(
                "{}\n",
                json!({"id": format!("d{i:02}"), "note": "n".repeat(900)})
            )
        })
        .collect();
    let out = fx.ferry(&["put", "downloads"], Some(records.as_bytes()));
    assert_eq!(out.status.code(), Some(0));
    let path = data_file(&fx);
    let before = std::fs::read(&path).unwrap();
    // The new record doubles the file: journal ~80 KiB (20 pages), growth 10 pages.
    let big = json!({"id": "big", "note": "b".repeat(40_000)}).to_string();
    for (case, free_pages) in [
        ("the journal does not fit", 2),
        ("the growth does not fit", 25),
    ] {
        let filler = fill_leaving(&json, free_pages);
        let out = fx.ferry(&["put", "downloads"], Some(big.as_bytes()));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert!(err.contains("the disk is full"), "{case}: {err}");
        assert!(err.contains("nothing was lost"), "{case}: {err}");
        assert!(err.contains(&*path.to_string_lossy()), "{case}: {err}");
        assert!(
            std::fs::read(&path).unwrap() == before,
            "{case}: the file changed"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&json)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.') || n.ends_with(".journal"))
            .collect();
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
        std::fs::remove_file(filler).unwrap();
    }
    let out = fx.ferry(&["put", "downloads"], Some(big.as_bytes()));
    assert_eq!(out.status.code(), Some(0), "with space again");
    assert!(read_object(&path).contains_key("big"));
}
