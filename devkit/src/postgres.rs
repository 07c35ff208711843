//! Finding the PostgreSQL server the tests and the receiver's examples use.

/// The URL of the PostgreSQL server the environment names: `FERRY_TEST_POSTGRES` (a
/// `postgres://` URL), or libpq's variables (`PGHOST`, `PGPORT`, `PGUSER`,
/// `PGPASSWORD`, `PGDATABASE`) as `pg_virtualenv` exports them, `PGHOST` a host or a
/// socket folder. `None` when neither names one.
pub fn url_from_env() -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(url) = var("FERRY_TEST_POSTGRES") {
        return Some(url);
    }
    let host = var("PGHOST")?;
    let port = var("PGPORT").unwrap_or_else(|| "5432".into());
    let user = var("PGUSER").unwrap_or_else(|| "postgres".into());
    let password = var("PGPASSWORD")
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let db = var("PGDATABASE").unwrap_or_else(|| "postgres".into());
    Some(if host.starts_with('/') {
        format!("postgres://{user}{password}@localhost:{port}/{db}?host={host}")
    } else {
        format!("postgres://{user}{password}@{host}:{port}/{db}")
    })
}
