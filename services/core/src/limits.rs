//! Upper bounds on the sizes and counts that come from outside a process:
//! settings, announcements, batch objects, checkpoint metadata. Each is far
//! above any real use and far below what would exhaust a machine, so a
//! mistaken or hostile value is refused with a reason that names it instead
//! of being allocated. The settings are checked against them at start-up
//! (`settings/validate.rs`), the model's shape wherever a model is built
//! (`ModelConfig::validate`), announcements and batches as they arrive.
//! docs/security.md lists them with the defaults they bound; changing one
//! means changing it here and rebuilding.

/// Largest square input side, in pixels (`model.image_size`, checkpoint
/// metadata): 7x the published 299. One RGB image of 2048 px is 12 MiB, a
/// batch of 32 of them 384 MiB.
pub const MAX_IMAGE_SIZE: u32 = 2048;

/// Most outputs of a model, labels plus the background class (checkpoint
/// metadata, and so the labels of a dataset the trainer trains on):
/// 4.5x ImageNet-21k's 21,842. The logits layer then holds 100,000 x 2048
/// weights (780 MiB at depth multiplier 1).
pub const MAX_NUM_CLASSES: u32 = 100_000;

/// Largest channel multiplier (`model.depth_multiplier`, checkpoint
/// metadata): 4x the published network is about 16x its weights (350
/// million without the logits).
pub const MAX_DEPTH_MULTIPLIER: f64 = 4.0;

/// Largest floor on any layer's channels (`model.min_depth`, checkpoint
/// metadata; TF-slim's default is 16). A floor raises every narrower layer
/// to it, so the weights grow with its square: 512 channels everywhere is
/// 164 million weights (measured at depth multiplier 0.1), 4096 would be
/// about 10 billion.
pub const MAX_MIN_DEPTH: u32 = 512;

/// Most images in a batch (`pipeline.batch_size`, `eval.batch_size`):
/// 2048x the default 32.
pub const MAX_BATCH_SIZE: u32 = 65_536;

/// Most batches the queue between preprocess workers and the trainer holds
/// (`pipeline.queue_capacity`; the default is 8).
pub const MAX_QUEUE_CAPACITY: u32 = 100_000;

/// Largest `pipeline.max_image_pixels`: a gigapixel image is 3 GB decoded
/// (the default, 100 million pixels, is 300 MB).
pub const MAX_IMAGE_PIXELS: u64 = 1_000_000_000;

/// Most records one shard may hold or an announcement claim
/// (`ingest.shard_max_images`, `ShardReady.records`): a billion records of
/// even a kilobyte would be a terabyte shard. build_image_data.py writes
/// ImageNet's 1.28 million training images as 1024 shards of 1252.
pub const MAX_SHARD_RECORDS: u64 = 1_000_000_000;

/// Largest shard manifest read back (`datasets/<name>/manifests/…`, by
/// `inception lineage`): a million images at 256 bytes of JSON each.
pub const MAX_MANIFEST_BYTES: u64 = 256 << 20;

/// Most shards a checkpoint's lineage lists by name (each of its two lists:
/// since the parent, and since the first checkpoint); examples from further
/// shards are counted without their names. 2048 entries of at most
/// [`MAX_LINEAGE_SHARD_KEY`] bytes are about 1 MB of metadata, which leaves
/// the label names of [`MAX_NUM_CLASSES`] room within the metadata bound.
pub const MAX_LINEAGE_SHARDS: usize = 2048;

/// Longest shard key a batch message may name for lineage; a longer one
/// counts its examples without a name.
pub const MAX_LINEAGE_SHARD_KEY: usize = 200;

/// Most ancestors a checkpoint's lineage lists (step, key, examples each);
/// the oldest are dropped first, and counted.
pub const MAX_LINEAGE_ANCESTORS: usize = 1000;
