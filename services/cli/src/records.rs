//! `inception records verify|stats|inspect FILE`: look inside TFRecord files
//! (ours or TensorFlow's), from a local path, a key in the configured object
//! store, or an object store URL (`s3://bucket/prefix/train-00000-of-00002`).

use anyhow::{bail, Context};
use inception_core::cli::CommonArgs;
use inception_core::Store;
use inception_ingest::records;

#[derive(Debug, clap::Args)]
pub(crate) struct RecordsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Check every record's checksums; exit 1 on the first bad framing.
    Verify { file: String },
    /// Count records and labels.
    Stats { file: String },
    /// Print the features of one record.
    Inspect {
        file: String,
        #[arg(long, default_value_t = 0)]
        index: usize,
    },
}

fn read(args: &CommonArgs, file: &str) -> anyhow::Result<Vec<u8>> {
    let path = std::path::Path::new(file);
    if path.is_file() {
        return std::fs::read(path).with_context(|| format!("cannot read {file}"));
    }
    let settings = args.settings(Vec::new())?;
    let runtime = tokio::runtime::Runtime::new()?;
    // A URL (s3://bucket/prefix/shard, file:///dir/shard): open its folder as a store.
    if inception_ingest::source::is_url(file) {
        let (dir, name) = file.rsplit_once('/').with_context(|| format!("{file}: no object name"))?;
        let store = Store::open(&inception_core::settings::StoreSettings { url: dir.to_string(), ..settings.store })?;
        let bytes = runtime.block_on(store.get(name)).with_context(|| format!("cannot read {file}"))?;
        return Ok(bytes.to_vec());
    }
    let store = Store::open(&settings.store)?;
    let bytes = runtime.block_on(store.get(file)).with_context(|| format!("{file} is not a local file"))?;
    Ok(bytes.to_vec())
}

pub(crate) fn run(args: RecordsArgs) -> anyhow::Result<()> {
    match &args.action {
        Action::Verify { file } | Action::Stats { file } => {
            let s = records::stats(&read(&args.common, file)?);
            if matches!(args.action, Action::Stats { .. }) {
                for (label, (text, count)) in &s.labels {
                    println!("label {label} {text:?}: {count}");
                }
                for (i, reason) in &s.unreadable {
                    println!("record {i}: {reason}");
                }
            }
            println!("{file}: {} records", s.records);
            if let Some(e) = s.framing {
                bail!("{file}: corrupt framing: {e}");
            }
        }
        Action::Inspect { file, index } => {
            let lines =
                records::inspect(&read(&args.common, file)?, *index).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            for l in lines {
                println!("{l}");
            }
        }
    }
    Ok(())
}
