use super::*;
use std::io::Write;

const NO_ENV: [(&str, &str); 0] = [];

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    path
}

fn load_text(name: &str, text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, name, text);
    Config::load(&path, &NO_ENV)
}

fn error_text(name: &str, text: &str) -> String {
    load_text(name, text).unwrap_err().to_string()
}

const MINIMAL: &str = "[[collections]]\nname = \"events\"\nendpoint = \"/api/events\"\n";

#[test]
fn shipped_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["config/ferry.example.toml", "config/ferry.example.ini"] {
        let config =
            Config::load(&root.join(name), &NO_ENV).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(!config.collections.is_empty(), "{name}");
    }
}

/// The TOML example is the packaged /etc/ferry/ferry.toml: its `remote.url` is left for
/// the user to set, and setting it is uncommenting one line.
#[test]
fn the_shipped_toml_leaves_remote_url_to_the_user() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/ferry.example.toml");
    let config = Config::load(&path, &NO_ENV).unwrap();
    assert!(config.remote.url.is_none());
    let text = std::fs::read_to_string(&path).unwrap();
    let set = text.replacen("#url = ", "url = ", 1);
    assert_ne!(text, set);
    let config = load_text("ferry.toml", &set).unwrap();
    assert!(config.remote.url.is_some());
}

#[test]
fn defaults_are_the_spec_defaults() {
    let config = load_text("f.toml", MINIMAL).unwrap();
    assert_eq!(config.storage.backend, Backend::Sqlite);
    assert_eq!(
        config.remote.timeout.get(),
        std::time::Duration::from_secs(10)
    );
    assert_eq!(config.remote.max_concurrent, 4);
    assert_eq!(config.remote.idempotency_header.as_str(), "Idempotency-Key");
    assert_eq!(config.sync.mode, SyncMode::Continuous);
    assert_eq!(
        config.sync.interval.get(),
        std::time::Duration::from_secs(300)
    );
    assert_eq!(config.sync.batch_size, 250);
    let events = &config.collections[0];
    assert_eq!(events.key.as_str(), "id");
    assert_eq!(events.order_by().as_str(), "id");
    assert_eq!(events.remote_id.as_str(), "/id");
    assert_eq!(events.updates(), Updates::Ignore);
    assert_eq!(events.json_file_name(), "events.json");
    assert!(config.device_id.as_deref().is_some_and(|d| !d.is_empty()));
}

#[test]
fn unknown_key_names_file_line_and_column() {
    let err = error_text("f.toml", "[remote]\nurl = \"http://h\"\ntimeuot = \"5s\"\n");
    assert!(err.contains("f.toml:3:1"), "{err}");
    assert!(err.contains("unknown field `timeuot`"), "{err}");
    assert!(
        err.contains("timeout"),
        "the message lists the expected keys: {err}"
    );
}

#[test]
fn wrong_types_and_bad_values_are_located() {
    let cases = [
        (
            "[remote]\nmax_concurrent = \"four\"\n",
            "f.toml:2:18",
            "invalid type",
        ),
        (
            "[remote]\nmax_concurrent = 0\n",
            "f.toml:2:18",
            "from 1 to 256",
        ),
        (
            "[remote]\ntimeout = \"10\"\n",
            "f.toml:2:11",
            "unit is missing",
        ),
        (
            "[sync]\ninterval = \"0s\"\n",
            "f.toml:2:12",
            "greater than zero",
        ),
        (
            "[sync]\nmode = \"sometimes\"\n",
            "f.toml:2:8",
            "unknown variant",
        ),
        ("[remote]\nurl = \"ftp://x\"\n", "f.toml:2:7", "base URL"),
        ("[storage]\nbackend = \"mysql\"\n", "f.toml:2:11", "sqlite"),
        (
            "[[collections]]\nname = \"sync_tracking\"\nendpoint = \"/x\"\n",
            "f.toml:2:8",
            "reserved",
        ),
        (
            "[[collections]]\nname = \"a b\"\nendpoint = \"/x\"\n",
            "f.toml:2:8",
            "letters, digits",
        ),
        (
            "[[collections]]\nname = \"a\"\nendpoint = \"x\"\n",
            "f.toml:3:12",
            "starts with '/'",
        ),
        (
            "[[collections]]\nname = \"a\"\n",
            "f.toml:1:1",
            "missing field `endpoint`",
        ),
    ];
    for (text, position, message) in cases {
        let err = error_text("f.toml", text);
        assert!(err.contains(position), "{text:?}: {err}");
        assert!(err.contains(message), "{text:?}: {err}");
    }
}

#[test]
fn duplicate_collection_names_point_at_both() {
    let text = format!("{MINIMAL}\n[[collections]]\nname = \"Events\"\nendpoint = \"/b\"\n");
    let err = error_text("f.toml", &text);
    assert!(
        err.contains("f.toml:6:8: collections[Events].name"),
        "{err}"
    );
    assert!(err.contains("first at line 2"), "{err}");
}

#[test]
fn cross_field_checks() {
    let err = error_text(
        "f.toml",
        "[[collections]]\nname = \"a\"\nendpoint = \"/a\"\nupdates = \"put\"\n",
    );
    assert!(
        err.contains("f.toml:4:11: collections[a].updates: needs `updated_at`"),
        "{err}"
    );
    let err = error_text(
        "f.toml",
        "[[collections]]\nname = \"a\"\nendpoint = \"/a\"\nblob_fields = [\"id\"]\n",
    );
    assert!(err.contains("cannot be a blob field"), "{err}");
}

#[test]
fn relative_paths_are_relative_to_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "f.toml",
        "[storage]\nsqlite_path = \"state/x.db\"\njson_dir = \"/abs/json\"\n[remote]\ntoken_file = \"token\"\n",
    );
    let config = Config::load(&path, &NO_ENV).unwrap();
    assert_eq!(config.storage.sqlite_path, dir.path().join("state/x.db"));
    assert_eq!(config.storage.json_dir, PathBuf::from("/abs/json"));
    assert_eq!(config.remote.token_file, Some(dir.path().join("token")));
}

#[test]
fn environment_overrides_use_the_seed_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "f.toml", MINIMAL);
    let env = [
        ("LOCAL_DB_PATH", "/data/surveillance.db"),
        ("BACKEND_URL", "http://backend:8000"),
        ("SYNC_INTERVAL_MINUTES", "10"),
        ("DEVICE_ID", "raspberry-1"),
        ("SYNC_MODE", "once"),
        ("FERRY_LOG", "debug"),
    ];
    let config = Config::load(&path, &env).unwrap();
    assert_eq!(
        config.storage.sqlite_path,
        PathBuf::from("/data/surveillance.db")
    );
    assert_eq!(
        config.remote.url.as_ref().map(RemoteUrl::as_str),
        Some("http://backend:8000")
    );
    assert_eq!(
        config.sync.interval.get(),
        std::time::Duration::from_secs(600)
    );
    assert_eq!(config.device_id(), "raspberry-1");
    assert_eq!(config.sync.mode, SyncMode::Once);
    assert_eq!(config.log_level, LogLevel::Debug);

    let bad = [("SYNC_INTERVAL_MINUTES", "five"), ("SYNC_MODE", "often")];
    let err = Config::load(&path, &bad).unwrap_err().to_string();
    assert!(
        err.contains("environment variable SYNC_INTERVAL_MINUTES: sync.interval"),
        "{err}"
    );
    assert!(
        err.contains("environment variable SYNC_MODE: sync.mode"),
        "{err}"
    );
}

#[test]
fn config_path_prefers_flag_then_env_then_default() {
    let env = [("FERRY_CONFIG", "/tmp/x.toml")];
    assert_eq!(
        config_path(Some(Path::new("/a.toml")), &env),
        PathBuf::from("/a.toml")
    );
    assert_eq!(config_path(None, &env), PathBuf::from("/tmp/x.toml"));
    assert_eq!(
        config_path(None, &NO_ENV),
        PathBuf::from(DEFAULT_CONFIG_PATH)
    );
}

#[test]
fn missing_and_non_utf8_files_say_what_to_do() {
    let err = Config::load(Path::new("/nonexistent/ferry.toml"), &NO_ENV)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/ferry.toml: no config file here"),
        "{err}"
    );
    assert!(err.contains("--config"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, b"device_id = \"\xff\"\n").unwrap();
    let err = Config::load(&path, &NO_ENV).unwrap_err().to_string();
    assert!(err.contains("UTF-8"), "{err}");
}

#[test]
fn seed_000_config_ini_selects_json_and_implies_its_collections() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed000_config.ini");
    let config = Config::load(&path, &NO_ENV).unwrap();
    assert_eq!(config.storage.backend, Backend::Json);
    assert_eq!(
        config.storage.sqlite_path,
        PathBuf::from("/var/www/public/Plex-Service/data/plex_service.db")
    );
    let names: Vec<_> = config.collections.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["downloads", "seeds"]);
    let downloads = config.collection("downloads").unwrap();
    assert_eq!(
        downloads.updated_at.as_ref().map(FieldName::as_str),
        Some("updated_at")
    );
    assert_eq!(downloads.json_file_name(), "active_downloads.json");
}

#[test]
fn ini_errors_point_into_the_ini_file() {
    let err = error_text("f.ini", "[remote]\nurl = http://h\ntimeuot = 5s\n");
    assert!(err.contains("f.ini:3:1"), "{err}");
    assert!(err.contains("unknown field `timeuot`"), "{err}");
    let err = error_text("f.ini", "[sync]\n\ninterval =   soon\n");
    assert!(err.contains("f.ini:3:14"), "{err}");
    let err = error_text(
        "f.ini",
        "[collection a]\nendpoint = /a\n[collection a]\nendpoint = /b\n",
    );
    assert!(
        err.contains(
            "f.ini:3:1: collections[a].name: collection \"a\" is declared twice (first at line 1)"
        ),
        "{err}"
    );
}

#[test]
fn show_round_trips_through_the_loader() {
    let config = load_text("f.toml", MINIMAL).unwrap();
    let shown = config.to_toml();
    let again = load_text("g.toml", &shown).unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(again.to_toml(), shown);
}

#[test]
fn errors_name_the_key_path() {
    let cases = [
        ("[remote]\nmax_concurrent = \"four\"\n", "f.toml:2:18: remote.max_concurrent: invalid type: string \"four\", expected an integer"),
        ("[remote]\nurl = \"http://h\"\ntimeuot = \"5s\"\n", "f.toml:3:1: remote.timeuot: unknown field"),
        (
            "[[collections]]\nname = \"a\"\nendpoint = \"/a\"\nblob_fields = [1]\n",
            "f.toml:4:16: collections[0].blob_fields[0]: invalid type",
        ),
        ("log_level = 3\n", "f.toml:1:13: log_level: expected a string"),
    ];
    for (text, expected) in cases {
        let err = error_text("f.toml", text);
        assert!(err.contains(expected), "{text:?}: {err}");
    }
    let err = error_text("f.ini", "[remote]\nurl = http://h\nmax_concurrent = many\n");
    assert!(
        err.contains("f.ini:3:18: remote.max_concurrent: invalid type"),
        "{err}"
    );
}

#[test]
fn files_the_config_names_are_checked_with_their_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let token = write(&dir, "token", "s3cret\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    write(&dir, "ca.pem", "not a certificate\n");
    let path = write(
        &dir,
        "ferry.toml",
        &format!("[remote]\ntoken_file = \"token\"\nca_file = \"ca.pem\"\n{MINIMAL}"),
    );
    let config = Config::load(&path, &NO_ENV).unwrap();
    assert_eq!(config.remote.token().unwrap().unwrap().expose(), "s3cret");
    assert_eq!(
        format!("{:?}", config.remote.token().unwrap()),
        "Some(Token(***))"
    );
    let err = config.remote.check_files().unwrap_err().to_string();
    assert!(err.contains("remote.ca_file:"), "{err}");
    assert!(err.contains("ca.pem"), "{err}");
    std::fs::write(&token, "two words\nsecond line\n").unwrap();
    let err = config.remote.check_files().unwrap_err().to_string();
    assert!(
        err.contains("remote.token_file:") && err.contains("one line"),
        "{err}"
    );
    assert!(!err.contains("second line"), "{err}");
}
