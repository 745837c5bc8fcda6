//! Environment variables that look meant as settings but are not read: a
//! near miss of the `INCEPTION__SECTION__KEY` form (one underscore, a
//! misspelt prefix) would otherwise be ignored without a word, and the
//! service would run on the default.

/// Variables of the project that are not settings.
const OTHER_VARIABLES: [&str; 5] =
    ["INCEPTION_CONFIG", "INCEPTION_LOG_FORMAT", "INCEPTION_CHROMIUM", "INCEPTION_NATS_SERVER", "INCEPTION_SHARDS"];

/// One warning per variable name that is a near miss of a setting's name.
/// Only names are looked at: values (maybe secrets) are never shown.
pub(super) fn near_misses<I: IntoIterator<Item = String>>(names: I) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| is_near_miss(name))
        .map(|name| {
            format!(
                "environment variable {name} is not read: settings are INCEPTION__SECTION__KEY, with two \
                 underscores after INCEPTION and between section and key (e.g. INCEPTION__PIPELINE__BATCH_SIZE)"
            )
        })
        .collect()
}

fn is_near_miss(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    // The prefix is matched without regard to case (the config crate's way).
    if upper.starts_with("INCEPTION__") || OTHER_VARIABLES.contains(&upper.as_str()) {
        return false;
    }
    let prefix = upper.split('_').find(|p| !p.is_empty()).unwrap_or_default();
    // Settings-shaped: a section and a key after the prefix, or a prefix
    // one or two letters from INCEPTION.
    let shaped = upper.matches("__").count() >= 1 || upper.starts_with("INCEPTION_");
    shaped && (prefix == "INCEPTION" || (prefix.len() >= 6 && edit_distance(prefix, "INCEPTION") <= 2))
}

/// Levenshtein distance of two short ASCII words.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<u8> = b.bytes().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses_of_the_setting_form_are_named_and_others_left_alone() {
        let names = [
            "INCEPTION_PIPELINE__BATCH_SIZE",  // one underscore after the prefix
            "INCEPTON__PIPELINE__BATCH_SIZE",  // misspelt
            "INCPETION__TRAIN__MAX_STEPS",     // letters swapped
            "INCEPTION__PIPELINE__BATCH_SIZE", // right
            "inception__pipeline__batch_size", // right too: the prefix is read in any case
            "INCEPTION_CONFIG",                // the project's own
            "PATH",
            "CUDA_VISIBLE_DEVICES",
            "PERCEPTION__X__Y", // far from the prefix
        ];
        let warned: Vec<String> = near_misses(names.iter().map(|s| s.to_string()));
        assert_eq!(warned.len(), 3, "{warned:#?}");
        assert!(warned[0].starts_with("environment variable INCEPTION_PIPELINE__BATCH_SIZE is not read"));
        assert!(warned[1].contains("INCEPTON__PIPELINE__BATCH_SIZE"));
        assert!(warned[2].contains("INCPETION__TRAIN__MAX_STEPS"));
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("INCEPTON", "INCEPTION"), 1);
        assert_eq!(edit_distance("INCPETION", "INCEPTION"), 2);
        assert_eq!(edit_distance("PERCEPTION", "INCEPTION"), 3);
    }
}
