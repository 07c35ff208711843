//! `ferry put`, `ferry get`, `ferry list`: records by hand.

use serde_json::Value;

use super::{CliError, Exit, Stdout};
use crate::config::Config;
use crate::store::{self, Key, Record};

/// Records are listed in pages so a large collection is never held whole.
const LIST_PAGE: usize = 500;

pub fn put(config: &Config, collection: &str, id: Option<&str>) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let stdin = std::io::stdin().lock();
    let mut values = serde_json::Deserializer::from_reader(stdin).into_iter::<Value>();
    let mut out = Stdout::new();
    let mut count = 0usize;
    for value in values.by_ref() {
        count += 1;
        let value = value.map_err(|e| {
            CliError::Runtime(format!(
                "stdin: record {count} is not valid JSON at line {} column {}: {e}; nothing more was written",
                e.line(),
                e.column()
            ))
        })?;
        let Value::Object(mut record) = value else {
            return Err(CliError::Runtime(format!(
                "stdin: record {count} is {}, not a JSON object; nothing more was written",
                store::record::type_name(&value)
            )));
        };
        if let Some(id) = id {
            if count > 1 {
                return Err(CliError::Usage(
                    "--id names one record, but stdin holds several; put the key in each record instead".into(),
                ));
            }
            set_key(config, collection, &mut record, id)?;
        }
        let key = store.put(collection, record)?;
        if !out.line(key)? {
            break;
        }
    }
    if count == 0 {
        return Err(CliError::Usage(format!(
            "no record on stdin: pipe a JSON object in, like  echo '{{\"id\": 1}}' | ferry put {collection}"
        )));
    }
    out.finish()?;
    Ok(Exit::Done)
}

/// Gives a record the key `--id` names, unless it carries a different one.
fn set_key(
    config: &Config,
    collection: &str,
    record: &mut Record,
    id: &str,
) -> Result<(), CliError> {
    let Some(spec) = config.collection(collection) else {
        // The store reports unknown collections with the list of known ones.
        return Ok(());
    };
    let field = spec.key.as_str();
    let key = Key::parse(id);
    match record.get(field) {
        None | Some(Value::Null) => {
            record.insert(field.to_string(), key.to_value());
            Ok(())
        }
        Some(existing) => match Key::from_value(existing) {
            Ok(existing) if existing == key => Ok(()),
            _ => Err(CliError::Usage(format!(
                "the record's {field:?} field says {existing}, but --id says {id:?}; drop one of them"
            ))),
        },
    }
}

pub fn get(config: &Config, collection: &str, id: &str) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let key = Key::parse(id);
    match store.get(collection, &key)? {
        Some(record) => {
            let text = serde_json::to_string_pretty(&record)
                .map_err(|e| CliError::Runtime(format!("printing record {key}: {e}")))?;
            let mut out = Stdout::new();
            out.line(text)?;
            out.finish()?;
            Ok(Exit::Done)
        }
        None => Err(CliError::Runtime(format!(
            "no record {key} in collection {collection} ({} backend); `ferry list {collection}` shows what is there",
            config.storage.backend.as_str()
        ))),
    }
}

pub fn list(
    config: &Config,
    collection: &str,
    limit: Option<usize>,
    after: Option<&str>,
) -> Result<Exit, CliError> {
    let mut store = store::open(config)?;
    let mut out = Stdout::new();
    let mut after = after.map(Key::parse);
    let mut left = limit.unwrap_or(usize::MAX);
    while left > 0 {
        let page = store.list(collection, after.as_ref(), left.min(LIST_PAGE))?;
        let Some(last) = page.last() else { break };
        let spec_key = config
            .collection(collection)
            .map(|c| c.key.as_str())
            .unwrap_or("id");
        after = store::record::key_of(last, spec_key).ok();
        left -= page.len();
        let full_page = page.len() == LIST_PAGE;
        for record in page {
            let line = serde_json::to_string(&record)
                .map_err(|e| CliError::Runtime(format!("printing a record: {e}")))?;
            if !out.line(line)? {
                return Ok(Exit::Done);
            }
        }
        if !full_page || after.is_none() {
            break;
        }
    }
    out.finish()?;
    Ok(Exit::Done)
}
