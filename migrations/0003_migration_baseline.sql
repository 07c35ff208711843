-- ferry schema 2: the store's identity and the start-up migration's baseline (issue 14).
--
-- The migration between the SQLite and JSON stores is a three-way merge against what
-- both held when one was last brought up to date from the other: a record missing on
-- one side is then known as deleted there (it was in the baseline) or new on the other.
-- A baseline counts only between the two stores it names, by their store_id.

-- ferry's facts about this database, one row each.
CREATE TABLE ferry_meta (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO ferry_meta (name, value) VALUES ('store_id', 'sqlite-' || lower(hex(randomblob(16))));

-- One row per collection last migrated into this database.
CREATE TABLE ferry_baseline_meta (
    collection TEXT PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,        -- counts up with every migration, either way
    source_id TEXT NOT NULL,            -- store_id of the store read from
    target_id TEXT NOT NULL,            -- store_id of the store written into (this one)
    source_mark TEXT NOT NULL           -- the source's change mark when it was read
);

-- Per record: its content fingerprint on each side; NULL: absent on that side.
CREATE TABLE ferry_baseline (
    collection TEXT NOT NULL,
    key NOT NULL,
    source_fp INTEGER,
    target_fp INTEGER,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;
