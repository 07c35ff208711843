//! `sync_tracking` rows: the columns ferry reads, a row read back as a [`Tracking`],
//! and rows written (insert or replace, by `(table_name, local_id)`). Rows are kept as
//! the seed `003_…` service spelled them; what ferry does not know reads as the safe
//! reading (an unknown status as pending, an unknown claim state as unsure).

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params, Row};

use super::db::Db;
use super::table::{key_from_sql, key_to_sql};
use crate::store::{Claim, ClaimState, Status, StoreError, Tracking};

pub(super) const TRACKING_COLUMNS: &str = "s.local_id, s.remote_id, s.sync_date, s.sync_status, \
     s.error_message, s.attempts, s.next_attempt_at, s.version, s.last_http_status, s.bytes_sent, \
     s.claim_key, s.claim_version, s.claim_body_hash, s.claim_state, s.created, s.fingerprint, \
     s.claim_body, s.claim_fingerprint, s.error_cause";
/// How many columns `TRACKING_COLUMNS` lists.
pub(super) const TRACKING_WIDTH: usize = 19;

/// A tracking row written: inserted, or replacing the row of the same record.
const UPSERT: &str =
    "INSERT INTO sync_tracking (table_name, local_id, remote_id, sync_date, sync_status,
            error_message, attempts, next_attempt_at, version, last_http_status, bytes_sent,
            claim_key, claim_version, claim_body_hash, claim_state, created, fingerprint,
            claim_body, claim_fingerprint, error_cause)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
            ?17, ?18, ?19, ?20)
         ON CONFLICT (table_name, local_id) DO UPDATE SET
            remote_id = excluded.remote_id, sync_date = excluded.sync_date,
            sync_status = excluded.sync_status, error_message = excluded.error_message,
            attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
            version = excluded.version, last_http_status = excluded.last_http_status,
            bytes_sent = excluded.bytes_sent, claim_key = excluded.claim_key,
            claim_version = excluded.claim_version,
            claim_body_hash = excluded.claim_body_hash, claim_state = excluded.claim_state,
            created = excluded.created, fingerprint = excluded.fingerprint,
            claim_body = excluded.claim_body,
            claim_fingerprint = excluded.claim_fingerprint, error_cause = excluded.error_cause";

/// Writes tracking rows (insert, or replace the row of the same record).
pub(super) fn exec_tracking(db: Db<'_>, rows: &[Tracking]) -> Result<(), StoreError> {
    db.prepared(
        format_args!("writing {} tracking rows", rows.len()),
        UPSERT,
        |stmt| {
            for row in rows {
                // Rows still to be tried are due at 0 ("now") rather than NULL, so the
                // retry index finds them.
                let next = match (row.status, row.next_attempt_at) {
                    (Status::Success, at) => at,
                    (_, at) => Some(at.unwrap_or(0)),
                };
                stmt.execute(params![
                    row.collection,
                    key_to_sql(&row.key),
                    row.remote_id.as_ref().map_or(SqlValue::Null, key_to_sql),
                    row.sync_date,
                    row.status.as_str(),
                    row.error_message,
                    row.attempts,
                    next,
                    row.version,
                    row.last_http_status,
                    i64::try_from(row.bytes_sent).unwrap_or(i64::MAX),
                    row.claim.as_ref().map(|c| c.key.as_str()),
                    row.claim.as_ref().map(|c| c.version.as_str()),
                    row.claim.as_ref().map(|c| format!("{:016x}", c.body_hash)),
                    row.claim.as_ref().map(|c| c.state.as_str()),
                    row.created,
                    row.fingerprint.map(|f| format!("{f:016x}")),
                    row.claim.as_ref().and_then(|c| c.body.as_deref()),
                    row.claim
                        .as_ref()
                        .map(|c| format!("{:016x}", c.fingerprint)),
                    row.error_cause,
                ])
                .map_err(|e| {
                    db.error(
                        format_args!("writing tracking of {} record {}", row.collection, row.key),
                        e,
                    )
                })?;
            }
            Ok(())
        },
    )
}

pub(super) fn tracking_from_row(
    collection: &str,
    row: &Row<'_>,
    offset: usize,
) -> rusqlite::Result<Option<Tracking>> {
    let Some(key) = key_from_sql(row.get_ref(offset)?) else {
        return Ok(None);
    };
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match row.get_ref(offset + i)? {
            ValueRef::Null => None,
            ValueRef::Integer(n) => Some(n.to_string()),
            ValueRef::Real(f) => Some(f.to_string()),
            ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
        })
    };
    let status = text(3)?;
    Ok(Some(Tracking {
        collection: collection.to_string(),
        key,
        remote_id: key_from_sql(row.get_ref(offset + 1)?),
        sync_date: text(2)?.unwrap_or_default(),
        // An unknown status (hand-edited) is tried again rather than ignored.
        status: status
            .as_deref()
            .and_then(Status::parse)
            .unwrap_or(Status::Pending),
        error_message: text(4)?,
        error_cause: text(18)?,
        attempts: row
            .get::<_, Option<i64>>(offset + 5)?
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        next_attempt_at: row.get::<_, Option<i64>>(offset + 6)?.filter(|&at| at != 0),
        version: text(7)?,
        last_http_status: row
            .get::<_, Option<i64>>(offset + 8)?
            .and_then(|n| u16::try_from(n).ok()),
        bytes_sent: row
            .get::<_, Option<i64>>(offset + 9)?
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        claim: match text(10)? {
            Some(key) => Some(Claim {
                key,
                version: text(11)?.unwrap_or_default(),
                fingerprint: text(17)?
                    .and_then(|h| u64::from_str_radix(&h, 16).ok())
                    .unwrap_or(0),
                body_hash: text(12)?
                    .and_then(|h| u64::from_str_radix(&h, 16).ok())
                    .unwrap_or(0),
                state: ClaimState::parse(text(13)?.as_deref().unwrap_or("")),
                body: match row.get_ref(offset + 16)? {
                    ValueRef::Blob(b) => Some(b.to_vec()),
                    _ => None,
                },
            }),
            None => None,
        },
        created: row
            .get::<_, Option<i64>>(offset + 14)?
            .is_some_and(|n| n != 0),
        fingerprint: text(15)?.and_then(|h| u64::from_str_radix(&h, 16).ok()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_width_counts_the_tracking_columns() {
        assert_eq!(TRACKING_COLUMNS.split(',').count(), TRACKING_WIDTH);
    }
}
