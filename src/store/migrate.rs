//! The start-up migration between backends (SPEC §4). Before ferry starts delivering,
//! the active backend is brought up to date from the inactive one, record by record,
//! as a three-way merge against the [`Baseline`]: what both stores held, key by key,
//! when one was last brought up to date from the other. A record that one side lacks
//! is then known as deleted there (it was in the baseline) or as new on the other (it
//! was not), so a record another program deleted is not brought back.
//!
//! Per record, each side has *changed* when its content (a [`record::fingerprint`] of
//! the whole record, alike on both backends) differs from the baseline's:
//! - changed on the source only: the source's state wins (taken, or deleted here too);
//! - changed on the target only: the target's stays (a deletion here is not undone);
//! - changed on both: the newer `updated_at` wins; a deletion on either side against a
//!   change on the other keeps the target's state (deletions are never undone, changes
//!   never lost to an older deletion);
//! - changed on neither: the side the last migration went into holds the agreed state,
//!   so a target that was the source last time (after a backend switch) catches up.
//!
//! Whole-side times never decide which record wins. The migration looks at a
//! collection only when there is something to look at: the backend changed since the
//! last migration (it went into the other store), or the source was written since
//! (its change mark moved), or there is no baseline. Without a baseline (the first
//! migration ever, or a store made anew) a record found on one side only comes over,
//! unless deleted here, and the newer `updated_at` wins per record.
//!
//! Tracking is reconciled along: a row is taken where the source knows more (written
//! later), so deliveries made on either side are never repeated. A backup of the
//! target is taken before its records or tracking are written. Each collection is
//! applied all at once, with its new baseline (one SQLite transaction, or atomic file
//! replaces in an order that a crash leaves for the next start to finish).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::record::{self, Key, Record};
use super::time::parse_timestamp;
use super::{
    json, now_ms, open_backend, rfc3339, Baseline, Merge, Millis, Status, Store, StoreError,
    Tombstone, Tracking,
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
    /// Records deleted on the other side, and deleted here too.
    pub deleted: usize,
    /// Records deleted here that the other side still has: not brought back.
    pub kept_deleted: usize,
    /// Tracking rows taken from the other side.
    pub tracking: usize,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.migrated == 0
            && self.kept_newer == 0
            && self.deleted == 0
            && self.kept_deleted == 0
            && self.tracking == 0
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
        if self.kept_deleted > 0 {
            write!(f, ", {} kept deleted", self.kept_deleted)?;
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
/// collection where something was (or, with `dry_run`, would be) done. A dry run
/// reads exactly what a real run reads and decides alike; it writes nothing.
pub fn migrate(config: &Config, to: Backend, dry_run: bool) -> Result<Vec<Report>, StoreError> {
    let from = other(to);
    if !exists(config, from) {
        return Ok(Vec::new());
    }
    let mut source = open_backend(config, from)?;
    let mut target = open_backend(config, to)?;
    // A store without an identity yet gets one (only JSON: SQLite's is made with its
    // schema); no baseline can name it, so a dry run that cannot make one decides the
    // same as the real run.
    let source_id = match source.store_id(!dry_run) {
        Ok(id) => id,
        Err(err) => {
            tracing::warn!(
                "cannot give the {} store its identity ({err}): the migration cannot tell a \
                 record deleted on one side from one new on the other, and keeps both; \
                 make the folder writable for ferry",
                from.as_str()
            );
            None
        }
    };
    let target_id = target.store_id(!dry_run)?;
    let ids = source_id.zip(target_id);
    let mut reports = Vec::new();
    let mut backed_up = false;
    for collection in &config.collections {
        let name = collection.name.as_str();
        // Before the source is read: a write after this shows at the next start.
        let source_mark = source.change_mark(name)?;
        let kept = [target.baseline(name)?, source.baseline(name)?];
        let generation = kept
            .iter()
            .flatten()
            .map(|b| b.generation)
            .max()
            .unwrap_or(0)
            + 1;
        let known = ids
            .as_ref()
            .and_then(|(source_id, target_id)| trusted(&kept, source_id, target_id));
        if let Some(known) = &known {
            if known.into_target && known.source_mark == source_mark {
                continue; // the same way as last time, and nothing written there since
            }
        }
        let theirs = all_records(source.as_mut(), collection)?;
        let ours = all_records(target.as_mut(), collection)?;
        let sides = Sides {
            updated_at: collection.updated_at.as_ref().map(|f| f.as_str()),
            source: &theirs,
            target: &ours,
            // Without a baseline, tombstones tell deletions apart; with one, a record
            // missing where the baseline had it is the deletion.
            deleted_here: match known {
                Some(_) => BTreeSet::new(),
                None => target
                    .tombstones(name)?
                    .into_iter()
                    .map(|t| t.key)
                    .collect(),
            },
            deleted_there: match known {
                Some(_) => Vec::new(),
                None => source.tombstones(name)?,
            },
            target_time: target.last_written(name)?,
        };
        let planned = plan(&sides, known.as_ref());
        let mut merge = planned.merge;
        let mut report = planned.report;
        report.collection = name.to_string();
        report.from = Some(from);
        report.to = Some(to);
        // The keys the target holds once merged: tracking moves only for those (a
        // record gone on both sides frees its key, as a delivery loop does).
        let mut held: BTreeSet<Key> = ours.iter().map(|(k, _)| k.clone()).collect();
        let mut taken = BTreeSet::new();
        for record in &merge.upserts {
            if let Ok(key) = record::key_of(record, collection.key.as_str()) {
                held.insert(key.clone());
                taken.insert(key);
            }
        }
        for key in &merge.deletes {
            held.remove(key);
        }
        let tracking = tracking_to_take(source.as_mut(), target.as_mut(), name, &held, &taken)?;
        report.tracking = tracking.rows.len() + tracking.untrack.len();
        merge.tracking = tracking.rows;
        merge.untrack = tracking.untrack;
        merge.baseline = ids.as_ref().map(|(source_id, target_id)| Baseline {
            generation,
            source_id: source_id.clone(),
            target_id: target_id.clone(),
            source_mark,
            records: planned.baseline,
        });
        if !dry_run {
            if merge.writes_data() && !backed_up {
                backup(config, to, target.as_mut())?;
                backed_up = true;
            }
            if merge.writes_data() || merge.baseline.is_some() {
                target.apply_merge(name, &merge)?;
            }
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

/// A baseline as this migration reads it: per key, the fingerprints (source, target)
/// of the current source and target.
#[derive(Debug)]
struct Known {
    records: BTreeMap<Key, (Option<u64>, Option<u64>)>,
    /// The last migration went into the current target (the same way as now), so the
    /// target holds what was agreed; otherwise it went into the current source.
    into_target: bool,
    /// The source's change mark then (meaningful when `into_target`).
    source_mark: String,
}

/// The latest of the two stores' baselines that was made between exactly these two
/// stores, turned to this migration's direction. A baseline naming another store (a
/// store made anew, a copy from elsewhere) says nothing about these two.
fn trusted(kept: &[Option<Baseline>], source_id: &str, target_id: &str) -> Option<Known> {
    let latest = kept
        .iter()
        .flatten()
        .filter(|b| {
            (b.source_id == source_id && b.target_id == target_id)
                || (b.source_id == target_id && b.target_id == source_id)
        })
        .max_by_key(|b| b.generation)?;
    let into_target = latest.target_id == target_id;
    let records = latest
        .records
        .iter()
        .map(|(key, &(s, t))| (key.clone(), if into_target { (s, t) } else { (t, s) }))
        .collect();
    Some(Known {
        records,
        into_target,
        source_mark: latest.source_mark.clone(),
    })
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

/// What the target's tracking becomes.
struct TrackingTaken {
    rows: Vec<Tracking>,
    /// Rows the target forgets: of records it takes from the source, which knows of no
    /// delivery of them (the source's record is not the one the target's row was about).
    untrack: Vec<Key>,
}

/// The tracking rows the target takes, for the records it holds once merged (and any
/// row with an open claim: a create that may be on the server). A record taken from the
/// source (`taken`) brings its tracking — or its lack of any: the target's row, about
/// the record it replaces, is forgotten. For the others: a row the target lacks, or the
/// two rows merged when the source's knows more (see [`merge_tracking`]).
fn tracking_to_take(
    source: &mut dyn Store,
    target: &mut dyn Store,
    name: &str,
    held: &BTreeSet<Key>,
    taken: &BTreeSet<Key>,
) -> Result<TrackingTaken, StoreError> {
    let ours = all_tracking(target, name)?;
    let theirs = all_tracking(source, name)?;
    let mut rows = Vec::new();
    for (key, their_row) in &theirs {
        if !held.contains(key) && their_row.claim.is_none() {
            continue;
        }
        let row = match ours.get(key) {
            Some(current) if !taken.contains(key) => merge_tracking(current, their_row),
            _ => their_row.clone(),
        };
        if ours.get(key) != Some(&row) {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let untrack = taken
        .iter()
        .filter(|key| ours.contains_key(*key) && !theirs.contains_key(*key))
        .cloned()
        .collect();
    Ok(TrackingTaken { rows, untrack })
}

/// One row from two sides' rows for one record: the one written last (its
/// `sync_date`; on a tie, one with a claim, then a success, then the newer version),
/// with what either knows that never goes back — that the server holds the record
/// (`created`), and its id — so a clock that jumped cannot make a create be sent
/// twice.
fn merge_tracking(ours: &Tracking, theirs: &Tracking) -> Tracking {
    let (newer, older) = match compare_tracking(theirs, ours) {
        Ordering::Greater => (theirs, ours),
        _ => (ours, theirs),
    };
    let mut row = newer.clone();
    row.created |= older.created;
    if row.remote_id.is_none() {
        row.remote_id = older.remote_id.clone();
    }
    row
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
        .then_with(|| a.claim.is_some().cmp(&b.claim.is_some()))
        .then_with(|| delivered(a).cmp(&delivered(b)))
        .then_with(|| compare_versions(a.version.as_deref(), b.version.as_deref()))
}

/// What the merge of one collection reads: both sides' records and what it needs to
/// decide without a baseline.
struct Sides<'a> {
    updated_at: Option<&'a str>,
    source: &'a [(Key, Record)],
    target: &'a [(Key, Record)],
    /// Keys deleted through ferry on the target (tombstones of absent records), and
    /// the source's tombstones: read only without a baseline.
    deleted_here: BTreeSet<Key>,
    deleted_there: Vec<Tombstone>,
    /// The target's last write (for deletions of records without `updated_at`).
    target_time: Option<Millis>,
}

/// What to do with one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// Nothing (the same on both sides, or the target's state stands unremarked).
    Nothing,
    /// The source's record replaces or joins the target's.
    Take,
    /// Deleted on the source: deleted on the target too.
    Delete,
    /// The target's version is newer: kept.
    KeptNewer,
    /// Deleted on the target: not brought back.
    KeptDeleted,
}

struct Planned {
    merge: Merge,
    report: Report,
    baseline: BTreeMap<Key, (Option<u64>, Option<u64>)>,
}

/// One side's record and its fingerprint.
type Version<'a> = Option<(&'a Record, u64)>;

/// Decides every record of a collection (pure: the caller reads and writes).
fn plan(sides: &Sides<'_>, known: Option<&Known>) -> Planned {
    // The whole record, blobs included: any change counts.
    let with_fp = |records: &'_ [(Key, Record)]| -> BTreeMap<Key, (usize, u64)> {
        records
            .iter()
            .enumerate()
            .map(|(i, (key, r))| (key.clone(), (i, record::fingerprint(r, &[]))))
            .collect()
    };
    let source = with_fp(sides.source);
    let target = with_fp(sides.target);
    let mut keys: BTreeSet<&Key> = source.keys().chain(target.keys()).collect();
    if let Some(known) = known {
        keys.extend(known.records.keys());
    }
    let deletions: HashMap<&Key, Millis> = sides
        .deleted_there
        .iter()
        .map(|t| (&t.key, t.deleted_at))
        .collect();
    let mut planned = Planned {
        merge: Merge::default(),
        report: Report::default(),
        baseline: BTreeMap::new(),
    };
    for key in keys {
        let s: Version<'_> = source.get(key).map(|&(i, fp)| (&sides.source[i].1, fp));
        let t: Version<'_> = target.get(key).map(|&(i, fp)| (&sides.target[i].1, fp));
        let decision = match known {
            Some(known) => {
                let base = known.records.get(key).copied().unwrap_or((None, None));
                three_way(s, t, base, known.into_target, sides.updated_at)
            }
            None => union(key, s, t, sides, deletions.get(key).copied()),
        };
        let (sf, tf) = (s.map(|(_, fp)| fp), t.map(|(_, fp)| fp));
        let after = match decision {
            Decision::Take => {
                planned.report.migrated += 1;
                if t.is_some() {
                    planned.report.updated += 1;
                }
                if let Some((record, _)) = s {
                    planned.merge.upserts.push(record.clone());
                }
                sf
            }
            Decision::Delete => {
                planned.report.deleted += 1;
                planned.merge.deletes.push(key.clone());
                None
            }
            Decision::KeptNewer => {
                planned.report.kept_newer += 1;
                tf
            }
            Decision::KeptDeleted => {
                planned.report.kept_deleted += 1;
                tf
            }
            Decision::Nothing => tf,
        };
        if sf.is_some() || after.is_some() {
            planned.baseline.insert(key.clone(), (sf, after));
        }
    }
    planned
}

/// The decision against a baseline (`base`: the fingerprints source, target then).
fn three_way(
    s: Version<'_>,
    t: Version<'_>,
    base: (Option<u64>, Option<u64>),
    into_target: bool,
    updated_at: Option<&str>,
) -> Decision {
    let (sf, tf) = (s.map(|(_, fp)| fp), t.map(|(_, fp)| fp));
    if sf == tf {
        return Decision::Nothing;
    }
    let follow_source = || match (s, t) {
        (Some(_), _) => Decision::Take,
        (None, Some(_)) => Decision::Delete,
        (None, None) => Decision::Nothing,
    };
    match (sf != base.0, tf != base.1) {
        // Unchanged since: the store the last migration went into holds the agreed
        // state; a target that was the source then catches up.
        (false, false) if into_target => Decision::Nothing,
        (false, false) => follow_source(),
        (true, false) => follow_source(),
        (false, true) => match (s, t) {
            (Some(_), Some(_)) => Decision::KeptNewer,
            (Some(_), None) => Decision::KeptDeleted,
            _ => Decision::Nothing,
        },
        (true, true) => match (s, t) {
            (Some((s, _)), Some((t, _))) => newer(s, t, updated_at),
            (Some(_), None) => Decision::KeptDeleted,
            // Deleted on the source, changed here: the change is not lost.
            _ => Decision::Nothing,
        },
    }
}

/// Without a baseline: a record on one side only comes over unless deleted here; on
/// both sides, the newer `updated_at` wins; a deletion on the source comes over when
/// the target's copy is older than it.
fn union(
    key: &Key,
    s: Version<'_>,
    t: Version<'_>,
    sides: &Sides<'_>,
    deleted_there_at: Option<Millis>,
) -> Decision {
    match (s, t) {
        (Some(_), None) if sides.deleted_here.contains(key) => Decision::KeptDeleted,
        (Some(_), None) => Decision::Take,
        (Some((_, sf)), Some((_, tf))) if sf == tf => Decision::Nothing,
        (Some((s, _)), Some((t, _))) => newer(s, t, sides.updated_at),
        (None, Some((t, _))) => {
            let Some(deleted_at) = deleted_there_at else {
                return Decision::Nothing;
            };
            let changed_at = record::updated_at_text(t, sides.updated_at)
                .as_deref()
                .and_then(parse_timestamp);
            let older = match changed_at {
                Some(at) => at < deleted_at,
                // No version: older than the deletion if this side was not written since.
                None => sides.target_time.is_none_or(|at| at < deleted_at),
            };
            if older {
                Decision::Delete
            } else {
                Decision::Nothing
            }
        }
        (None, None) => Decision::Nothing,
    }
}

/// Two versions of a record, both changed: the newer `updated_at` wins; without one
/// (or the same), the target's stays.
fn newer(source: &Record, target: &Record, updated_at: Option<&str>) -> Decision {
    let order = compare_versions(
        record::updated_at_text(source, updated_at).as_deref(),
        record::updated_at_text(target, updated_at).as_deref(),
    );
    match order {
        Ordering::Greater => Decision::Take,
        Ordering::Less => Decision::KeptNewer,
        Ordering::Equal => Decision::Nothing,
    }
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
    fn two_rows_merge_what_each_knows_and_a_claim_wins_a_tie() {
        // Delivered on one side; the other side's row is newer by the clock (it
        // jumped) but knows nothing of the delivery.
        let mut delivered = Tracking::new("c", Key::Int(1), 0);
        delivered.status = Status::Success;
        delivered.created = true;
        delivered.remote_id = Some(Key::Int(9));
        let mut later = Tracking::new("c", Key::Int(1), 60_000);
        later.status = Status::Failed;
        let merged = merge_tracking(&delivered, &later);
        assert_eq!(merged.status, Status::Failed);
        assert!(merged.created, "the server holds it: never created twice");
        assert_eq!(merged.remote_id, Some(Key::Int(9)));
        // Same time: the row with an open claim is kept.
        let pending = Tracking::new("c", Key::Int(1), 0);
        let mut claimed = pending.clone();
        claimed.claim = Some(crate::store::Claim {
            key: "k".into(),
            version: "v1".into(),
            fingerprint: 1,
            body_hash: 2,
            state: crate::store::ClaimState::Unsure,
            body: None,
        });
        assert_eq!(merge_tracking(&pending, &claimed).claim, claimed.claim);
        assert_eq!(merge_tracking(&claimed, &pending).claim, claimed.claim);
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

    /// Every combination of (absent, as in the baseline, changed) on each side, both
    /// ways the last migration went.
    #[test]
    fn three_way_decisions() {
        use Decision::*;
        let rec = |v: &str| -> Record {
            serde_json::from_value(serde_json::json!({"id": 1, "updated_at": v})).unwrap()
        };
        fn v(r: &Record) -> Version<'_> {
            Some((r, record::fingerprint(r, &[])))
        }
        let fp = |r: &Record| record::fingerprint(r, &[]);
        let (old, early, late) = (
            &rec("2026-01-01T00:00:00Z"),
            &rec("2026-01-02T00:00:00Z"),
            &rec("2026-01-03T00:00:00Z"),
        );
        let base = (Some(fp(old)), Some(fp(old)));
        let u = Some("updated_at");
        let cases = [
            // Nothing changed anywhere.
            (v(old), v(old), base, true, Nothing),
            // Changed on one side only: that side wins, a deletion included.
            (v(late), v(old), base, true, Take),
            (None, v(old), base, true, Delete),
            (v(old), v(late), base, true, KeptNewer),
            (v(old), None, base, true, KeptDeleted),
            // New on the source (not in the baseline): taken.
            (v(old), None, (None, None), true, Take),
            // Changed on both: the newer updated_at, whichever side has it.
            (v(late), v(early), base, true, Take),
            (v(early), v(late), base, true, KeptNewer),
            (v(late), v(late), base, true, Nothing),
            // A deletion against a change: the target's state stays.
            (v(late), None, base, true, KeptDeleted),
            (None, v(late), base, true, Nothing),
            // Neither changed but they differ (the target won last time): nothing;
            // unless the last migration went the other way: the target catches up.
            (
                v(old),
                v(late),
                (Some(fp(old)), Some(fp(late))),
                true,
                Nothing,
            ),
            (
                v(late),
                v(old),
                (Some(fp(late)), Some(fp(old))),
                false,
                Take,
            ),
            (None, v(old), (None, Some(fp(old))), false, Delete),
            (v(old), None, (Some(fp(old)), None), false, Take),
            (v(old), None, (Some(fp(old)), None), true, Nothing),
        ];
        for (i, (s, t, base, into_target, want)) in cases.into_iter().enumerate() {
            assert_eq!(three_way(s, t, base, into_target, u), want, "case {i}");
        }
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
