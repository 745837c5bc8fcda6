//! Integer settings take whole numbers only. The `config` crate turns any
//! number into the integer a field asks for (8.5 is rounded to 9, -3.0
//! becomes 0 for an unsigned field, `true` becomes 1), so a mistaken value
//! would be used silently. The type of each key is the one its default has
//! in `config/default.toml` (where floats are written with a decimal
//! point): a key whose default is an integer refuses a float, a boolean or
//! text that is not an integer, naming the key, before the settings are
//! read into their types. Likewise a key whose default is a float takes
//! only a finite number: not NaN or an infinity (which no bound written as
//! `x <= max` would catch), nor a boolean (which `config` reads as 0 or 1).

use config::{Map, Value, ValueKind};

/// One line for every integer key of `defaults` whose value in `merged` is
/// not a whole number written as one.
pub(super) fn problems(merged: &Value, defaults: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for (section, default_keys) in sections(defaults) {
        let Some(given) = table(merged).and_then(|t| t.get(section)).and_then(table) else { continue };
        for (key, default) in default_keys {
            let Some(value) = given.get(key) else { continue };
            if is_integer(&default.kind) {
                if let Some(shown) = not_whole(value) {
                    problems.push(format!(
                        "{section}.{key} = {shown}: must be a whole number (such as 8, no decimal point)"
                    ));
                }
            } else if matches!(default.kind, ValueKind::Float(_)) {
                if let Some(shown) = not_finite(value) {
                    problems.push(format!("{section}.{key} = {shown}: must be a finite number (such as 0.5)"));
                }
            }
        }
    }
    problems
}

/// The sections of the root table, each with its table of keys.
fn sections(root: &Value) -> impl Iterator<Item = (&String, &Map<String, Value>)> {
    table(root).into_iter().flat_map(|t| t.iter().filter_map(|(name, v)| Some((name, table(v)?))))
}

fn table(value: &Value) -> Option<&Map<String, Value>> {
    match &value.kind {
        ValueKind::Table(t) => Some(t),
        _ => None,
    }
}

fn is_integer(kind: &ValueKind) -> bool {
    matches!(kind, ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_))
}

/// The value as written, when it is not a whole number written as one.
fn not_whole(value: &Value) -> Option<String> {
    match &value.kind {
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => None,
        // Flags and `--set` give text: an integer written as text is fine.
        ValueKind::String(s) if s.parse::<i128>().is_ok() => None,
        ValueKind::String(s) => Some(format!("{s:?}")),
        ValueKind::Float(f) => Some(format!("{f:?}")),
        ValueKind::Boolean(b) => Some(b.to_string()),
        ValueKind::Nil => Some("nothing".into()),
        ValueKind::Table(_) => Some("a table".into()),
        ValueKind::Array(_) => Some("a list".into()),
    }
}

/// The value as written, when it is not a finite number.
fn not_finite(value: &Value) -> Option<String> {
    match &value.kind {
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => None,
        ValueKind::Float(f) if f.is_finite() => None,
        ValueKind::Float(f) => Some(f.to_string()),
        ValueKind::String(s) if s.parse::<f64>().is_ok_and(f64::is_finite) => None,
        ValueKind::String(s) => Some(format!("{s:?}")),
        ValueKind::Boolean(b) => Some(b.to_string()),
        ValueKind::Nil => Some("nothing".into()),
        ValueKind::Table(_) => Some("a table".into()),
        ValueKind::Array(_) => Some("a list".into()),
    }
}
