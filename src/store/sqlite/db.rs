//! The one way the SQLite backend runs a statement: [`Db`] holds the connection (or a
//! transaction) with the database's path, and every statement is run with the
//! operation it belongs to, so that every error says where and while doing what ("SQLite
//! error in /var/lib/ferry/ferry.db while finding new records of downloads: …").
//!
//! A statement is prepared once and kept in the connection's statement cache, unless
//! the site says [`Db::once`] (statements run at start-up, or rarely): the cache is
//! small and belongs to the statements that find and deliver work. This file knows no
//! table and no record; it never builds SQL.

use std::fmt::Display;
use std::path::Path;

use rusqlite::types::Value as SqlValue;
use rusqlite::{CachedStatement, Connection, OptionalExtension, Params, Row, Statement};

use crate::store::StoreError;

/// A statement with its values, kept to be run later: a watermark move after the read
/// snapshot that called for it, a sweep's mark after its chunk was read.
pub(super) type Deferred = (&'static str, Vec<SqlValue>);

/// A connection (or a transaction, which derefs to one) and the database's path.
#[derive(Clone, Copy)]
pub(super) struct Db<'a> {
    conn: &'a Connection,
    path: &'a Path,
    cached: bool,
}

impl<'a> Db<'a> {
    pub(super) fn new(conn: &'a Connection, path: &'a Path) -> Db<'a> {
        Db {
            conn,
            path,
            cached: true,
        }
    }

    /// The same, with statements prepared anew each time and not cached.
    pub(super) fn once(self) -> Db<'a> {
        Db {
            cached: false,
            ..self
        }
    }

    pub(super) fn conn(&self) -> &'a Connection {
        self.conn
    }

    /// The error of `op` on this database.
    pub(super) fn error(&self, op: impl Display, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.to_path_buf(),
            op: op.to_string(),
            source,
        }
    }

    /// Runs `f` on the statement `sql`, prepared (or taken from the cache); `f` says
    /// what its own errors are (a statement run once per row may name the row).
    pub(super) fn prepared<T>(
        &self,
        op: impl Display,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let prepared = if self.cached {
            self.conn.prepare_cached(sql).map(Prepared::Cached)
        } else {
            self.conn.prepare(sql).map(Prepared::Once)
        };
        match prepared.map_err(|e| self.error(op, e))? {
            Prepared::Cached(mut s) => f(&mut s),
            Prepared::Once(mut s) => f(&mut s),
        }
    }

    /// Runs `f` on the statement `sql`; its errors are those of `op`.
    pub(super) fn with_statement<T>(
        &self,
        op: impl Display,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.prepared(&op, sql, |s| f(s).map_err(|e| self.error(&op, e)))
    }

    /// Every row of `sql`, each through `map`.
    pub(super) fn rows<T>(
        &self,
        op: impl Display,
        sql: &str,
        params: impl Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        self.with_statement(op, sql, |s| s.query_map(params, map)?.collect())
    }

    /// The rows of `sql` that `map` makes something of (`Some`).
    pub(super) fn some_rows<T>(
        &self,
        op: impl Display,
        sql: &str,
        params: impl Params,
        map: impl FnMut(&Row<'_>) -> rusqlite::Result<Option<T>>,
    ) -> Result<Vec<T>, StoreError> {
        self.with_statement(op, sql, |s| {
            s.query_map(params, map)?
                .filter_map(Result::transpose)
                .collect()
        })
    }

    /// The first row of `sql`, which must have one.
    pub(super) fn row<T>(
        &self,
        op: impl Display,
        sql: &str,
        params: impl Params,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        if self.cached {
            self.with_statement(op, sql, |s| s.query_row(params, map))
        } else {
            self.conn
                .query_row(sql, params, map)
                .map_err(|e| self.error(op, e))
        }
    }

    /// The first row of `sql`, if it has one.
    pub(super) fn optional_row<T>(
        &self,
        op: impl Display,
        sql: &str,
        params: impl Params,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        if self.cached {
            self.with_statement(op, sql, |s| s.query_row(params, map).optional())
        } else {
            self.conn
                .query_row(sql, params, map)
                .optional()
                .map_err(|e| self.error(op, e))
        }
    }

    /// Runs `sql`; returns how many rows it changed.
    pub(super) fn execute(
        &self,
        op: impl Display,
        sql: &str,
        params: impl Params,
    ) -> Result<usize, StoreError> {
        if self.cached {
            self.with_statement(op, sql, |s| s.execute(params))
        } else {
            self.conn
                .execute(sql, params)
                .map_err(|e| self.error(op, e))
        }
    }

    /// Runs `sql`, which may be several statements, without parameters (never cached).
    pub(super) fn batch(&self, op: impl Display, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql).map_err(|e| self.error(op, e))
    }
}

enum Prepared<'c> {
    Cached(CachedStatement<'c>),
    Once(Statement<'c>),
}
