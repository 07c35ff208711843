//! The start-up migration between backends (SPEC §4). Before ferry starts delivering,
//! the active backend is brought up to date from the inactive one, record by record:
//! the newer `updated_at` wins; a record found on one side only is kept; a deletion
//! made on the active side is not undone; tracking rows move with their records, so a
//! backend switch never makes ferry send a record again.
//!
//! Records are merged when the inactive side was written after the active one (JSON:
//! the file's time; SQLite: `MAX(updated_at)` and ferry's own write marks). Tracking is
//! reconciled whenever an inactive side exists, and written only where the inactive
//! side knows more (a success the active side does not have): deliveries made on
//! either side are never repeated. A backup of the target is taken before it is
//! written. Each collection is applied all at once (one SQLite transaction, or
//! atomic file replaces in an order that a crash leaves for the next start to finish).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::record::{self, Key, Record};
use super::time::parse_timestamp;
use super::{
    json, now_ms, open_backend, rfc3339, Merge, Millis, Status, Store, StoreError, Tracking,
};
use crate::config::{Backend, Collection, Config};

/// Records read from a store per step.
const PAGE: usize = 50_000;

/// What a migration did (or, in a dry run, would do) to one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub collection: String,
    pub from: Option<Backend>,
    pub to: Option<Backend>,
    /// Records brought over: new ones plus `updated`.
    pub migrated: usize,
    /// Records replaced by a newer version from the other side.
    pub updated: usize,
    /// Records the other side had in an older version.
    pub kept_newer: usize,
    /// Records deleted on the other side after their last change here.
    pub deleted: usize,
    /// Tracking rows taken from the other side.
    pub tracking: usize,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.migrated == 0 && self.kept_newer == 0 && self.deleted == 0 && self.tracking == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |b: Option<Backend>| b.map_or("?", Backend::as_str);
        write!(
            f,
            "migration {}→{}: {} {} migrated ({} updated, {} kept newer)",
            side(self.from),
            side(self.to),
            self.migrated,
            self.collection,
            self.updated,
            self.kept_newer
        )?;
        if self.deleted > 0 {
            write!(f, ", {} deleted", self.deleted)?;
        }
        if self.tracking > 0 {
            write!(f, ", {} tracking rows moved", self.tracking)?;
        }
        Ok(())
    }
}

fn other(backend: Backend) -> Backend {
    match backend {
        Backend::Sqlite => Backend::Json,
        Backend::Json => Backend::Sqlite,
    }
}

/// Whether the `backend` store has ever been written (without creating it).
pub fn exists(config: &Config, backend: Backend) -> bool {
    match backend {
        Backend::Sqlite => config.storage.sqlite_path.is_file(),
        Backend::Json => {
            let dir = &config.storage.json_dir;
            dir.join(json::TRACKING_FILE).is_file()
                || config
                    .collections
                    .iter()
                    .any(|c| dir.join(c.json_file_name()).is_file())
        }
    }
}

/// Brings the `to` backend up to date from the other one. Returns a report for every
/// collection where something was (or, with `dry_run`, would be) done.
pub fn migrate(config: &Config, to: Backend, dry_run: bool) -> Result<Vec<Report>, StoreError> {
    let from = other(to);
    if !exists(config, from) {
        return Ok(Vec::new());
    }
    let mut source = open_backend(config, from)?;
    let mut target = open_backend(config, to)?;
    let mut reports = Vec::new();
    let mut backed_up = false;
    for collection in &config.collections {
        let name = collection.name.as_str();
        let source_time = source.last_written(name)?;
        let target_time = target.last_written(name)?;
        let (merge, mut report) = plan(
            collection,
            source.as_mut(),
            target.as_mut(),
            source_time,
            target_time,
        )?;
        report.from = Some(from);
        report.to = Some(to);
        let writes =
            !merge.upserts.is_empty() || !merge.deletes.is_empty() || !merge.tracking.is_empty();
        if !dry_run && writes {
            if !backed_up {
                backup(config, to, target.as_mut())?;
                backed_up = true;
            }
            target.apply_merge(name, &merge)?;
        }
        if !report.is_empty() {
            if !dry_run {
                tracing::info!(collection = name, "{report}");
            }
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Every record of a collection, by key.
fn all_records(
    store: &mut dyn Store,
    collection: &Collection,
) -> Result<Vec<(Key, Record)>, StoreError> {
    let name = collection.name.as_str();
    let mut out = Vec::new();
    let mut after: Option<Key> = None;
    loop {
        let page = store.list(name, after.as_ref(), PAGE)?;
        let full = page.len() == PAGE;
        for record in page {
            if let Ok(key) = record::key_of(&record, collection.key.as_str()) {
                after = Some(key.clone());
                out.push((key, record));
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

fn all_tracking(
    store: &mut dyn Store,
    collection: &str,
) -> Result<HashMap<Key, Tracking>, StoreError> {
    let mut out = HashMap::new();
    let mut after: Option<Key> = None;
    loop {
        let page = store.tracking_page(collection, after.as_ref(), PAGE)?;
        let full = page.len() == PAGE;
        for row in page {
            after = Some(row.key.clone());
            out.insert(row.key.clone(), row);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Which of two versions (updated_at values) is newer: as timestamps when both read
/// as one (two spellings of one instant are equal), as text otherwise.
fn compare_versions(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (Some(a), Some(b)) => match (parse_timestamp(a), parse_timestamp(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => a.cmp(b),
        },
    }
}

/// The tracking row to keep when both sides have one: the one written last (its
/// `sync_date`); on a tie, a success over anything else, then the newer version.
/// `Greater` means `a`.
fn compare_tracking(a: &Tracking, b: &Tracking) -> Ordering {
    let at = |t: &Tracking| parse_timestamp(&t.sync_date).unwrap_or(0);
    let delivered = |t: &Tracking| t.status == Status::Success;
    at(a)
        .cmp(&at(b))
        .then_with(|| delivered(a).cmp(&delivered(b)))
        .then_with(|| compare_versions(a.version.as_deref(), b.version.as_deref()))
}

/// Works out what the source has that the target should take.
///
/// - A record on the source side only is taken (unless deleted on the target), however
///   the two sides' times compare: times can mislead (a local time read as UTC), a
///   lost record cannot be undone.
/// - A record on both sides is replaced by the source's when the source side was
///   written last and its version is newer (without versions: when the source side
///   was written last).
/// - A deletion on the source side is applied when the target's copy is older than the
///   deletion (its version, or else the target side's last write).
/// - A tracking row is taken when it is newer than the target's (its `sync_date`),
///   or the target has none.
fn plan(
    collection: &Collection,
    source: &mut dyn Store,
    target: &mut dyn Store,
    source_time: Option<Millis>,
    target_time: Option<Millis>,
) -> Result<(Merge, Report), StoreError> {
    let name = collection.name.as_str();
    let updated_at = collection.updated_at.as_ref().map(|f| f.as_str());
    let mut merge = Merge::default();
    let mut report = Report {
        collection: name.to_string(),
        ..Report::default()
    };
    let source_newer = match (source_time, target_time) {
        (Some(s), Some(t)) => s > t,
        (Some(_), None) => true,
        (None, _) => false,
    };

    let theirs = all_records(source, collection)?;
    // The target's records: all at once when that is cheap, one by one otherwise.
    let target_size = target.counts(name)?.records as usize;
    let mut preloaded: Option<HashMap<Key, Record>> = if target_size <= 4 * theirs.len() + 1000 {
        Some(all_records(target, collection)?.into_iter().collect())
    } else {
        None
    };
    let mut current = |target: &mut dyn Store, key: &Key| -> Result<Option<Record>, StoreError> {
        match preloaded.as_mut() {
            Some(map) => Ok(map.get(key).cloned()),
            None => target.get(name, key),
        }
    };
    let deleted_here: HashMap<Key, Millis> = target
        .tombstones(name)?
        .into_iter()
        .map(|t| (t.key, t.deleted_at))
        .collect();
    for (key, record) in theirs {
        match current(target, &key)? {
            None if deleted_here.contains_key(&key) => {} // deleted here: stays deleted
            None => {
                report.migrated += 1;
                merge.upserts.push(record);
            }
            Some(ours) if ours == record || !source_newer => {}
            Some(ours) => {
                let order = match updated_at {
                    Some(_) => compare_versions(
                        record::updated_at_text(&record, updated_at).as_deref(),
                        record::updated_at_text(&ours, updated_at).as_deref(),
                    ),
                    None => Ordering::Greater,
                };
                match order {
                    Ordering::Greater => {
                        report.migrated += 1;
                        report.updated += 1;
                        merge.upserts.push(record);
                    }
                    Ordering::Less => report.kept_newer += 1,
                    Ordering::Equal => {}
                }
            }
        }
    }
    for tombstone in source.tombstones(name)? {
        let Some(ours) = current(target, &tombstone.key)? else {
            continue;
        };
        let changed_at = record::updated_at_text(&ours, updated_at)
            .as_deref()
            .and_then(parse_timestamp);
        let older = match changed_at {
            Some(at) => at < tombstone.deleted_at,
            None => target_time.is_none_or(|t| t < tombstone.deleted_at),
        };
        if older {
            report.deleted += 1;
            merge.deletes.push(tombstone.key);
        }
    }
    drop(preloaded.take());

    let ours = all_tracking(target, name)?;
    for (key, theirs) in all_tracking(source, name)? {
        let take = match ours.get(&key) {
            None => true,
            Some(current) => {
                current != &theirs && compare_tracking(&theirs, current) == Ordering::Greater
            }
        };
        if take {
            report.tracking += 1;
            merge.tracking.push(theirs);
        }
    }
    Ok((merge, report))
}

/// A backup of the store about to be written, in `backups_dir`; only the newest
/// `backups_keep` are kept.
fn backup(config: &Config, backend: Backend, store: &mut dyn Store) -> Result<PathBuf, StoreError> {
    let dir = &config.storage.backups_dir;
    std::fs::create_dir_all(dir).map_err(StoreError::io(dir, "creating the backups folder"))?;
    let prefix = format!("ferry-{}-", backend.as_str());
    let stamp = rfc3339(now_ms()).replace(':', "-");
    let dest = match backend {
        Backend::Sqlite => dir.join(format!("{prefix}{stamp}-before-migration.db")),
        Backend::Json => dir.join(format!("{prefix}{stamp}-before-migration")),
    };
    store.backup(&dest)?;
    tracing::info!(backup = %dest.display(), "backed up the {} store before migrating into it", backend.as_str());
    prune(dir, &prefix, config.storage.backups_keep as usize);
    Ok(dest)
}

/// Removes all but the newest `keep` backups whose names start with `prefix` (the
/// names sort by time).
fn prune(dir: &Path, prefix: &str, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut backups: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    for old in backups.into_iter().take(excess) {
        let removed = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        if let Err(err) = removed {
            tracing::warn!(backup = %old.display(), "cannot remove an old backup: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_times_when_they_are_times() {
        assert_eq!(
            compare_versions(Some("2026-01-02 00:00:00"), Some("2026-01-01T23:00:00Z")),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions(Some("1700000000"), Some("1700000000000")),
            Ordering::Equal
        );
        assert_eq!(compare_versions(Some("b"), Some("a")), Ordering::Greater);
        assert_eq!(compare_versions(None, Some("a")), Ordering::Less);
    }

    #[test]
    fn the_tracking_row_written_last_wins() {
        let mut delivered = Tracking::new("c", Key::Int(1), 0);
        delivered.status = Status::Success;
        delivered.version = Some("v1".into());
        let mut later_failure = Tracking::new("c", Key::Int(1), 10_000);
        later_failure.status = Status::Failed;
        later_failure.version = Some("v2".into());
        assert_eq!(
            compare_tracking(&later_failure, &delivered),
            Ordering::Greater
        );
        // Same time: a delivery wins.
        let mut pending = Tracking::new("c", Key::Int(1), 0);
        pending.version = Some("v1".into());
        assert_eq!(compare_tracking(&delivered, &pending), Ordering::Greater);
    }

    #[test]
    fn reports_read_like_the_spec() {
        let report = Report {
            collection: "downloads".into(),
            from: Some(Backend::Json),
            to: Some(Backend::Sqlite),
            migrated: 120,
            updated: 3,
            ..Report::default()
        };
        assert_eq!(
            report.to_string(),
            "migration json→sqlite: 120 downloads migrated (3 updated, 0 kept newer)"
        );
    }
}
