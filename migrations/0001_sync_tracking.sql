-- ferry schema 1: delivery tracking, collection bookkeeping, tombstones.
--
-- sync_tracking keeps the seed 003 sync service's columns and names, so its tools and
-- queries keep working; a database that already has that table keeps it and its rows
-- (CREATE ... IF NOT EXISTS), and gets ferry's columns added.
--
-- local_id and remote_id are declared without a type (no affinity) so that a text key
-- such as '0042' is kept as text. The seed declared them INTEGER; an adopted table keeps
-- its declaration, which is right for its integer ids.
CREATE TABLE IF NOT EXISTS sync_tracking (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    table_name TEXT NOT NULL,           -- the collection
    local_id NOT NULL,                  -- the record's key
    remote_id,                          -- the server's id for it
    sync_date TEXT NOT NULL,            -- when the status last changed
    sync_status TEXT NOT NULL,          -- 'pending', 'success', 'failed'
    error_message TEXT,
    UNIQUE (table_name, local_id)
);

ALTER TABLE sync_tracking ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_tracking ADD COLUMN next_attempt_at INTEGER;       -- Unix ms; 0 = now
ALTER TABLE sync_tracking ADD COLUMN version TEXT;                  -- record version delivered / being delivered
ALTER TABLE sync_tracking ADD COLUMN last_http_status INTEGER;
ALTER TABLE sync_tracking ADD COLUMN bytes_sent INTEGER NOT NULL DEFAULT 0;

-- Rows the seed left pending or failed are due now.
UPDATE sync_tracking SET next_attempt_at = 0
 WHERE next_attempt_at IS NULL AND sync_status <> 'success';

-- Finding retries that are due reads this index, never the whole table.
CREATE INDEX IF NOT EXISTS ferry_sync_tracking_due
    ON sync_tracking (table_name, sync_status, next_attempt_at);

-- One row per collection ferry has opened in this database.
CREATE TABLE ferry_collections (
    name TEXT PRIMARY KEY NOT NULL,
    layout TEXT NOT NULL,               -- 'document' (ferry's table) or 'columns'
    created_by_ferry INTEGER NOT NULL,
    last_write_ms INTEGER,              -- ferry's last write to the collection
    new_watermark INTEGER NOT NULL DEFAULT 0,   -- every row at or below this rowid is tracked
    new_watermark_key,                  -- the key of the row at new_watermark
    changed_watermark                   -- changes below this updated_at value were all seen
);

-- Records deleted through ferry, so a migration from an older copy does not revive them.
CREATE TABLE ferry_tombstones (
    collection TEXT NOT NULL,
    key NOT NULL,
    deleted_at INTEGER NOT NULL,        -- Unix ms
    PRIMARY KEY (collection, key)
);
