//! The INI spelling of the config (SPEC §3), read by translating it line for line into
//! the TOML schema, so both spellings share one set of serde structs and one validation.
//! Each generated TOML line remembers the INI line it came from, and errors found in
//! the TOML are reported at the INI line and column.
//!
//! Besides the sections that mirror the TOML tables (`[storage]`, `[remote]`, `[sync]`,
//! `[collection NAME]`), the seed `000_…` `[BDD]` section is understood as is:
//! `sql = true|false` selects the backend and `db_path` is the SQLite file.

use super::error::{ConfigError, ConfigProblem, Origin};
use std::path::Path;

/// Where a generated TOML line came from in the INI text (1-based).
#[derive(Clone, Copy, Debug, Default)]
pub struct IniOrigin {
    pub line: usize,
    pub key_column: usize,
    pub value_column: usize,
    /// Byte offset in the generated TOML line where the value starts.
    generated_value_start: usize,
}

/// The TOML text made from an INI file, and how to map its positions back.
#[derive(Debug)]
pub struct Translated {
    pub toml: String,
    origins: Vec<IniOrigin>,
    /// The file had the seed `000_…` `[BDD]` section.
    pub has_bdd_section: bool,
}

impl Translated {
    /// The INI line and column of a byte offset in the generated TOML.
    pub fn ini_position(&self, offset: usize) -> (usize, usize) {
        let (line, column) = super::error::line_column(&self.toml, offset);
        match self.origins.get(line - 1) {
            Some(origin) if origin.line > 0 => {
                if column > origin.generated_value_start {
                    (origin.line, origin.value_column)
                } else {
                    (origin.line, origin.key_column)
                }
            }
            _ => (line, 1),
        }
    }
}

#[derive(Default)]
struct Table {
    header: Option<String>,
    header_origin: IniOrigin,
    entries: Vec<(String, String, IniOrigin)>,
}

pub fn translate(path: &Path, text: &str) -> Result<Translated, ConfigError> {
    // Tables keep their INI order; the legacy [BDD] keys are folded into [storage].
    let mut tables: Vec<Table> = vec![Table::default()];
    let mut current = 0usize;
    let mut has_bdd_section = false;
    let mut in_bdd = false;
    let mut storage_index: Option<usize> = None;

    for (index, raw_line) in text.lines().enumerate() {
        let line_no = index + 1;
        let indent = raw_line.len() - raw_line.trim_start().len();
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let column_of = |byte: usize| raw_line[..byte].chars().count() + 1;
        if let Some(inner) = line.strip_prefix('[') {
            let Some(inner) = strip_comment(inner).strip_suffix(']') else {
                return Err(problem(
                    path,
                    line_no,
                    column_of(indent),
                    None,
                    "a section header must end with ']' (like [storage] or [collection downloads])",
                ));
            };
            let name = inner.trim();
            let origin = IniOrigin {
                line: line_no,
                key_column: column_of(indent),
                value_column: column_of(indent),
                generated_value_start: usize::MAX,
            };
            in_bdd = name.eq_ignore_ascii_case("BDD");
            if in_bdd {
                has_bdd_section = true;
                current = storage_table(&mut tables, &mut storage_index, origin);
            } else if name == "storage" {
                current = storage_table(&mut tables, &mut storage_index, origin);
            } else if let Some(collection) = name.strip_prefix("collection ") {
                let collection = collection.trim();
                tables.push(Table {
                    header: Some(String::from("[[collections]]")),
                    header_origin: origin,
                    entries: vec![(String::from("name"), toml_string(collection), origin)],
                });
                current = tables.len() - 1;
            } else if name == "collection" || name == "collections" {
                return Err(problem(
                    path,
                    line_no,
                    column_of(indent),
                    None,
                    "a collection section needs its name: [collection downloads]",
                ));
            } else {
                tables.push(Table {
                    header: Some(format!("[{}]", toml_key(name))),
                    header_origin: origin,
                    entries: Vec::new(),
                });
                current = tables.len() - 1;
            }
            continue;
        }
        let Some(eq) = line.find('=') else {
            return Err(problem(
                path,
                line_no,
                column_of(indent),
                None,
                "expected `key = value`, a [section] header, or a comment starting with # or ;",
            ));
        };
        let key = line[..eq].trim();
        let value_raw = line[eq + 1..].trim_start();
        let value_offset = indent + (line.len() - value_raw.len());
        let value = strip_comment(value_raw).trim_end();
        if key.is_empty() {
            return Err(problem(
                path,
                line_no,
                column_of(indent),
                None,
                "the key before '=' is empty",
            ));
        }
        let origin = IniOrigin {
            line: line_no,
            key_column: column_of(indent),
            value_column: column_of(value_offset),
            generated_value_start: 0,
        };
        let (key, value) = if in_bdd {
            match key {
                "sql" => match value.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "on" | "1" => (String::from("backend"), toml_string("sqlite")),
                    "false" | "no" | "off" | "0" => (String::from("backend"), toml_string("json")),
                    _ => return Err(problem(path, line_no, origin.value_column, Some("BDD.sql"),
                        &format!("expected true (SQLite) or false (JSON), got {value:?}"))),
                },
                "db_path" => (String::from("sqlite_path"), toml_string(value)),
                other => return Err(problem(path, line_no, origin.key_column, Some(&format!("BDD.{other}")),
                    "unknown key in [BDD]: it takes `sql` (true for SQLite, false for JSON) and `db_path`")),
            }
        } else {
            (toml_key(key), ini_value(value))
        };
        tables[current].entries.push((key, value, origin));
    }

    let mut toml = String::new();
    let mut origins = Vec::new();
    for table in &tables {
        if let Some(header) = &table.header {
            toml.push_str(header);
            toml.push('\n');
            origins.push(table.header_origin);
        }
        for (key, value, origin) in &table.entries {
            let mut origin = *origin;
            origin.generated_value_start = key.chars().count() + 3;
            toml.push_str(key);
            toml.push_str(" = ");
            toml.push_str(value);
            toml.push('\n');
            origins.push(origin);
        }
    }
    Ok(Translated {
        toml,
        origins,
        has_bdd_section,
    })
}

fn storage_table(
    tables: &mut Vec<Table>,
    storage_index: &mut Option<usize>,
    origin: IniOrigin,
) -> usize {
    *storage_index.get_or_insert_with(|| {
        tables.push(Table {
            header: Some(String::from("[storage]")),
            header_origin: origin,
            entries: Vec::new(),
        });
        tables.len() - 1
    })
}

/// Drops a trailing `# comment` or `; comment` (one that follows whitespace, so that
/// `http://host/#anchor` keeps its `#`). A quoted value keeps what is inside its quotes.
fn strip_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    let mut quote: Option<u8> = None;
    for (i, &b) in bytes.iter().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if (b == b'"' || b == b'\'') && i == 0 => quote = Some(b),
            None if (b == b'#' || b == b';') && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return &value[..i];
            }
            None => {}
        }
    }
    value
}

/// An INI value as TOML: booleans, integers, quoted strings, arrays and inline tables
/// are taken as they are; anything else is a string.
fn ini_value(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    if lower == "true" || lower == "false" {
        return lower;
    }
    let digits = value.strip_prefix(['-', '+']).unwrap_or(value);
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && value.parse::<i64>().is_ok()
    {
        return value.to_string();
    }
    let looks_like_toml = value.starts_with('"')
        || value.starts_with('\'')
        || value.starts_with('[')
        || value.starts_with('{');
    if looks_like_toml && toml::from_str::<toml::Table>(&format!("v = {value}")).is_ok() {
        return value.to_string();
    }
    toml_string(value)
}

fn toml_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        toml_string(key)
    }
}

fn problem(
    path: &Path,
    line: usize,
    column: usize,
    key: Option<&str>,
    message: &str,
) -> ConfigError {
    ConfigError::single(ConfigProblem {
        origin: Origin::File {
            path: path.to_path_buf(),
            line,
            column,
        },
        key: key.map(str::to_string),
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(text: &str) -> Translated {
        translate(Path::new("t.ini"), text).expect("translates")
    }

    #[test]
    fn seed_bdd_section_selects_the_backend() {
        let t = tr(
            "[BDD]\nsql = false  # true pour SQLite, false pour JSON\ndb_path = /var/www/x.db\n",
        );
        assert!(t.has_bdd_section);
        let table: toml::Table = toml::from_str(&t.toml).unwrap();
        assert_eq!(table["storage"]["backend"].as_str(), Some("json"));
        assert_eq!(
            table["storage"]["sqlite_path"].as_str(),
            Some("/var/www/x.db")
        );
    }

    #[test]
    fn bdd_and_storage_sections_merge_into_one_table() {
        let t =
            tr("[storage]\njson_dir = /tmp\n[BDD]\nsql = true\n[remote]\nurl = http://h/#frag\n");
        let table: toml::Table = toml::from_str(&t.toml).unwrap();
        assert_eq!(table["storage"]["backend"].as_str(), Some("sqlite"));
        assert_eq!(table["storage"]["json_dir"].as_str(), Some("/tmp"));
        assert_eq!(table["remote"]["url"].as_str(), Some("http://h/#frag"));
    }

    #[test]
    fn storage_keys_after_bdd_are_not_legacy_keys() {
        let t = tr("[BDD]\nsql = true\n[storage]\nbackups_keep = 3\n");
        let table: toml::Table = toml::from_str(&t.toml).unwrap();
        assert_eq!(table["storage"]["backups_keep"].as_integer(), Some(3));
    }

    #[test]
    fn collections_values_and_positions() {
        let text = "device_id = pi\n[collection media]\nkey = id_media ; comment\nblob_fields = [\"video_data\"]\nextra = { source = \"x\" }\n";
        let t = tr(text);
        let table: toml::Table = toml::from_str(&t.toml).unwrap();
        let c = &table["collections"][0];
        assert_eq!(c["name"].as_str(), Some("media"));
        assert_eq!(c["key"].as_str(), Some("id_media"));
        assert_eq!(c["blob_fields"][0].as_str(), Some("video_data"));
        let offset = t.toml.find("blob_fields").unwrap();
        assert_eq!(t.ini_position(offset), (4, 1));
        let value_offset = t.toml.find("[\"video").unwrap();
        assert_eq!(t.ini_position(value_offset), (4, 15));
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let err = translate(Path::new("t.ini"), "[sync]\nmode continuous\n").unwrap_err();
        assert!(err.to_string().contains("t.ini:2:1"), "{err}");
        let err = translate(Path::new("t.ini"), "[BDD]\nsql = maybe\n").unwrap_err();
        assert!(err.to_string().contains("t.ini:2:7: BDD.sql"), "{err}");
    }
}
