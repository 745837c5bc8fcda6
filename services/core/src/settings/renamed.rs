//! Keys of earlier versions, still accepted with a deprecation warning: the
//! settings that several stages read moved to `[pipeline]`, durations given
//! as bare seconds (`*_secs`) became durations with a unit, and colour
//! distortion joined the other distortions in `[augment]`.

use config::{Map, Value, ValueKind};

/// How an old key's value becomes the new key's.
#[derive(Debug, Clone, Copy)]
enum Conversion {
    /// Taken as it is.
    Same,
    /// A number of seconds, written as `"<n>s"`.
    Seconds,
}

/// Old key, new key, conversion.
const RENAMED: [(&str, &str, Conversion); 12] = [
    ("preprocess.batch_size", "pipeline.batch_size", Conversion::Same),
    ("preprocess.queue_capacity", "pipeline.queue_capacity", Conversion::Same),
    ("ingest.max_image_pixels", "pipeline.max_image_pixels", Conversion::Same),
    ("train.run", "pipeline.run", Conversion::Same),
    ("nats.connect_retry_secs", "nats.connect_retry", Conversion::Seconds),
    ("nats.connect_retry_max_secs", "nats.connect_retry_max", Conversion::Seconds),
    ("ingest.shard_max_age_secs", "ingest.shard_max_age", Conversion::Seconds),
    ("ingest.poll_interval_secs", "ingest.poll_interval", Conversion::Seconds),
    ("preprocess.orphan_batch_age_secs", "preprocess.orphan_batch_age", Conversion::Seconds),
    ("train.batch_ack_wait_secs", "train.batch_ack_wait", Conversion::Seconds),
    ("eval.eval_interval_secs", "eval.eval_interval", Conversion::Seconds),
    ("preprocess.distort_color", "augment.distort_color", Conversion::Same),
];

/// Moves the value of every old key in `merged` (all layers) to its new
/// key. `explicit` holds only what was given (file, environment, flags):
/// where the new key was given too, it wins and the old one is dropped.
/// Returns a warning for each old key found, or an error naming a key whose
/// value cannot be converted.
pub(super) fn apply(merged: &mut Value, explicit: &Value) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for (old, new, conversion) in RENAMED {
        let Some(value) = remove(merged, old) else { continue };
        if lookup(explicit, new).is_some() {
            warnings.push(format!("{old} is deprecated and ignored: {new} is set too"));
            continue;
        }
        let value = convert(value, conversion).map_err(|e| format!("{old}: {e}"))?;
        warnings.push(format!("{old} is deprecated: use {new} (taken as {new} = {})", show(&value)));
        insert(merged, new, value);
    }
    Ok(warnings)
}

fn convert(value: Value, conversion: Conversion) -> Result<Value, String> {
    match conversion {
        Conversion::Same => Ok(value),
        Conversion::Seconds => {
            let seconds = value.into_float().map_err(|e| format!("not a number of seconds ({e})"))?;
            Ok(Value::new(None, ValueKind::String(format!("{seconds}s"))))
        }
    }
}

fn show(value: &Value) -> String {
    match &value.kind {
        ValueKind::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn table(value: &Value) -> Option<&Map<String, Value>> {
    match &value.kind {
        ValueKind::Table(t) => Some(t),
        _ => None,
    }
}

fn lookup<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    let (section, name) = key.split_once('.')?;
    table(table(root)?.get(section)?)?.get(name)
}

fn remove(root: &mut Value, key: &str) -> Option<Value> {
    let (section, name) = key.split_once('.')?;
    let ValueKind::Table(sections) = &mut root.kind else { return None };
    let ValueKind::Table(keys) = &mut sections.get_mut(section)?.kind else { return None };
    keys.remove(name)
}

fn insert(root: &mut Value, key: &str, value: Value) {
    let Some((section, name)) = key.split_once('.') else { return };
    let ValueKind::Table(sections) = &mut root.kind else { return };
    let entry = sections.entry(section.to_string()).or_insert_with(|| Value::new(None, ValueKind::Table(Map::new())));
    if let ValueKind::Table(keys) = &mut entry.kind {
        keys.insert(name.to_string(), value);
    }
}
