//! Checks across the values of the settings, after they were read. Every
//! problem is reported, each naming its key, so that one run of a service
//! shows all there is to fix.

use super::{is_safe_token, Settings};
use crate::limits::{
    MAX_BATCH_SIZE, MAX_DEPTH_MULTIPLIER, MAX_IMAGE_PIXELS, MAX_IMAGE_SIZE, MAX_MIN_DEPTH, MAX_QUEUE_CAPACITY,
    MAX_SHARD_RECORDS,
};

impl Settings {
    /// Every unacceptable value, one line each; empty when all is well.
    // `!(x > 0.0)` on purpose: unlike `x <= 0.0`, it also refuses NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &dyn Fn() -> String| {
            if !ok {
                problems.push(problem());
            }
        };
        let p = &self.pipeline;
        check(self.preprocess.input_queue_memory_factor >= 0.0, &|| {
            "preprocess.input_queue_memory_factor must not be negative".into()
        });
        let m = &self.model;
        check(m.image_size >= 75, &|| {
            format!("model.image_size = {} is too small: Inception-v3 needs at least 75 pixels", m.image_size)
        });
        check(m.image_size <= MAX_IMAGE_SIZE, &|| {
            format!("model.image_size = {} is too large: at most {MAX_IMAGE_SIZE} pixels", m.image_size)
        });
        check(m.depth_multiplier > 0.0 && m.depth_multiplier <= MAX_DEPTH_MULTIPLIER, &|| {
            format!("model.depth_multiplier = {} must be in (0, {MAX_DEPTH_MULTIPLIER}]", m.depth_multiplier)
        });
        check((0.0..1.0).contains(&m.dropout), &|| "model.dropout must be in [0, 1)".into());
        let i = &self.ingest;
        check(
            i.num_threads > 0
                && i.train_shards.is_multiple_of(i.num_threads)
                && i.validation_shards.is_multiple_of(i.num_threads),
            &|| {
                format!(
                    "ingest.train_shards ({}) and ingest.validation_shards ({}) must be multiples of ingest.num_threads ({})",
                    i.train_shards, i.validation_shards, i.num_threads
                )
            },
        );
        check(!i.poll_interval.is_zero(), &|| "ingest.poll_interval must be longer than 0s".into());
        check(i.announce || i.incoming.is_empty(), &|| {
            "ingest.announce = false is for one-shot ingest: continuous ingest (ingest.incoming) announces every shard"
                .into()
        });
        let t = &self.train;
        check(t.num_gpus > 0 && p.batch_size.is_multiple_of(t.num_gpus.max(1)), &|| {
            format!("pipeline.batch_size ({}) must be a multiple of train.num_gpus ({})", p.batch_size, t.num_gpus)
        });
        check(t.checkpoint_every_steps > 0, &|| "train.checkpoint_every_steps must be at least 1".into());
        check(t.log_every_steps > 0, &|| "train.log_every_steps must be at least 1".into());
        let d = &self.distributed;
        check(d.world_size >= 1 && d.rank < d.world_size, &|| {
            format!(
                "distributed.rank = {} must be below distributed.world_size = {} (at least 1)",
                d.rank, d.world_size
            )
        });
        check(!d.timeout.is_zero(), &|| "distributed.timeout must be longer than 0s".into());
        check(d.world_size == 1 || !d.master_addr.trim().is_empty(), &|| {
            "distributed.master_addr must name rank 0's host".into()
        });
        let g = &self.promotion;
        check(g.min_precision_gain.is_finite() && (0.0..=1.0).contains(&g.min_precision_gain), &|| {
            format!("promotion.min_precision_gain = {} must be in [0, 1]", g.min_precision_gain)
        });
        check(g.max_recall_drop.is_finite() && (0.0..=1.0).contains(&g.max_recall_drop), &|| {
            format!("promotion.max_recall_drop = {} must be in [0, 1]", g.max_recall_drop)
        });
        check(g.min_examples > 0, &|| "promotion.min_examples must be at least 1".into());
        self.bound_problems(&mut problems);
        self.augment_problems(&mut problems);
        self.optimizer_problems(&mut problems);
        self.nats_problems(&mut problems);
        self.name_problems(&mut problems);
        self.serve_problems(&mut problems);
        problems
    }

    /// `[serve]`: sizes within bounds, waits that a client can afford.
    fn serve_problems(&self, problems: &mut Vec<String>) {
        let s = &self.serve;
        let counts = [
            ("serve.batch_size", u64::from(s.batch_size), 1, 1024),
            ("serve.max_request_bytes", s.max_request_bytes, 1 << 10, 1 << 30),
            ("serve.max_images_per_request", u64::from(s.max_images_per_request), 1, 1024),
            ("serve.queue_images", u64::from(s.queue_images), 1, 1 << 20),
            ("serve.top_k", u64::from(s.top_k), 1, u64::from(crate::limits::MAX_NUM_CLASSES)),
        ];
        for (key, value, low, high) in counts {
            if !(low..=high).contains(&value) {
                problems.push(format!("{key} = {value} must be in [{low}, {high}]"));
            }
        }
        if s.max_wait > std::time::Duration::from_secs(10) {
            problems
                .push(format!("serve.max_wait = {:?} must be at most 10s (every request waits up to it)", s.max_wait));
        }
        if s.poll_interval.is_zero() {
            problems.push("serve.poll_interval must be longer than 0s".into());
        }
    }

    /// Counts and sizes within their bounds ([`crate::limits`]): each is
    /// far above any real use, and far below what would exhaust a machine.
    fn bound_problems(&self, problems: &mut Vec<String>) {
        let (p, m) = (&self.pipeline, &self.model);
        let counts = [
            ("pipeline.batch_size", u64::from(p.batch_size), 1, u64::from(MAX_BATCH_SIZE)),
            ("pipeline.queue_capacity", u64::from(p.queue_capacity), 1, u64::from(MAX_QUEUE_CAPACITY)),
            ("pipeline.max_image_pixels", p.max_image_pixels, 1, MAX_IMAGE_PIXELS),
            ("model.min_depth", u64::from(m.min_depth), 1, u64::from(MAX_MIN_DEPTH)),
            ("ingest.shard_max_images", u64::from(self.ingest.shard_max_images), 1, MAX_SHARD_RECORDS),
            ("eval.batch_size", u64::from(self.eval.batch_size), 1, u64::from(MAX_BATCH_SIZE)),
            ("ingest.max_image_bytes", self.ingest.max_image_bytes, 1 << 10, 1 << 34),
            ("preprocess.shard_max_bytes", self.preprocess.shard_max_bytes, 1 << 10, 1 << 40),
            ("preprocess.shard_read_attempts", u64::from(self.preprocess.shard_read_attempts), 1, 1000),
            // JetStream's own limits: a signed 64-bit count, 64 MiB messages at most.
            ("nats.stream_max_messages", self.nats.stream_max_messages, 1, i64::MAX as u64),
            ("nats.stream_max_bytes", self.nats.stream_max_bytes, 1 << 20, i64::MAX as u64),
            ("nats.max_message_bytes", self.nats.max_message_bytes, 1 << 10, 64 << 20),
        ];
        for (key, value, low, high) in counts {
            if !(low..=high).contains(&value) {
                problems.push(format!("{key} = {value} must be in [{low}, {high}]"));
            }
        }
    }

    // `!(x >= a && x <= b)` on purpose: NaN fails every comparison.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn augment_problems(&self, problems: &mut Vec<String>) {
        let a = &self.augment;
        let mut range = |what: &str, min: f64, max: f64, low: f64, high: f64| {
            if !(min > low && min <= max && max <= high) {
                problems.push(format!(
                    "augment.{what}_min ({min}) and augment.{what}_max ({max}) must satisfy {low} < min <= max <= {high}"
                ));
            }
        };
        range("crop_area", a.crop_area_min, a.crop_area_max, 0.0, 1.0);
        range("aspect_ratio", a.aspect_ratio_min, a.aspect_ratio_max, 0.0, f64::MAX);
        let mut within = |key: &str, v: f64, low: f64, high: f64| {
            if !(v >= low && v <= high) {
                problems.push(format!("{key} = {v} must be in [{low}, {high}]"));
            }
        };
        within("augment.min_object_covered", a.min_object_covered, 0.0, 1.0);
        within("augment.flip_probability", a.flip_probability, 0.0, 1.0);
        within("augment.color_strength", a.color_strength, 0.0, 2.0);
        if !(a.eval_central_fraction > 0.0 && a.eval_central_fraction <= 1.0) {
            problems.push(format!("augment.eval_central_fraction = {} must be in (0, 1]", a.eval_central_fraction));
        }
        if a.crop_attempts == 0 {
            problems.push("augment.crop_attempts must be at least 1".into());
        }
        if a.resize_methods.is_empty() {
            problems.push("augment.resize_methods must name at least one method".into());
        }
    }

    // `!(x >= a && x <= b)` on purpose: NaN fails every comparison.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    fn optimizer_problems(&self, problems: &mut Vec<String>) {
        let t = &self.train;
        if !(t.initial_learning_rate > 0.0 && t.initial_learning_rate.is_finite()) {
            problems
                .push(format!("train.initial_learning_rate = {} must be a positive number", t.initial_learning_rate));
        }
        let mut within = |key: &str, v: f64, low: f64, high: f64, high_open: bool| {
            let below_high = if high_open { v < high } else { v <= high };
            if !(v >= low && below_high) {
                let bracket = if high_open { ')' } else { ']' };
                problems.push(format!("train.{key} = {v} must be in [{low}, {high}{bracket}"));
            }
        };
        within("warmup_start_fraction", t.warmup_start_fraction, 0.0, 1.0, false);
        within("cosine_final_fraction", t.cosine_final_fraction, 0.0, 1.0, false);
        within("label_smoothing", t.label_smoothing, 0.0, 1.0, true);
        within("aux_loss_weight", t.aux_loss_weight, 0.0, f64::MAX, false);
        within("weight_decay", t.weight_decay, 0.0, 1.0, true);
        within("sgd_momentum", t.sgd_momentum, 0.0, 1.0, true);
        within("adamw_beta1", t.adamw_beta1, 0.0, 1.0, true);
        within("adamw_beta2", t.adamw_beta2, 0.0, 1.0, true);
        within("batchnorm_decay", t.batchnorm_decay, 0.0, 1.0, true);
        within("moving_average_decay", t.moving_average_decay, 0.0, 1.0, true);
        if !(t.adamw_epsilon > 0.0) {
            problems.push(format!("train.adamw_epsilon = {} must be positive", t.adamw_epsilon));
        }
    }

    fn nats_problems(&self, problems: &mut Vec<String>) {
        let n = &self.nats;
        let methods = [!n.user.is_empty(), n.token.is_set(), n.nkey_seed.is_set(), !n.credentials_file.is_empty()];
        if methods.iter().filter(|m| **m).count() > 1 {
            problems.push("nats: set only one of user (with password), token, nkey_seed and credentials_file".into());
        }
        if n.password.is_set() && n.user.is_empty() {
            problems.push("nats.password is set but nats.user is not".into());
        }
        if n.tls_cert_file.is_empty() != n.tls_key_file.is_empty() {
            problems
                .push("nats.tls_cert_file and nats.tls_key_file go together (client certificate and its key)".into());
        }
        if self.store.s3_secret_access_key.is_set() && self.store.s3_access_key_id.is_empty() {
            problems.push("store.s3_secret_access_key is set but store.s3_access_key_id is not".into());
        }
        problems.extend(self.url_problems());
        if n.subject_prefix.is_empty()
            || !n.subject_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            problems.push("nats.subject_prefix must be non-empty and use only [A-Za-z0-9_-]".into());
        }
    }

    /// Malformed server and store URLs: a configuration error at once, not
    /// a server that seems down and is retried for ever.
    fn url_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let shown = self.nats.url_for_logs();
        let urls = self.nats.server_urls();
        if urls.is_empty() {
            problems.push("nats.url is empty: give the NATS server's URL, e.g. nats://127.0.0.1:4222".into());
        }
        for url in urls {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                problems.push(format!("nats.url = {shown:?}: {e} (use nats://, tls://, ws:// or wss://HOST:PORT)"));
            }
        }
        let store = &self.store.url;
        match url::Url::parse(store) {
            Ok(u) if matches!(u.scheme(), "file" | "memory" | "s3") => {}
            Ok(u) => problems.push(format!(
                "store.url = {store:?}: unsupported scheme {:?} (use file:///abs/path, memory:/// or s3://bucket/prefix)",
                u.scheme()
            )),
            Err(e) => problems.push(format!("store.url = {store:?}: not a URL ({e}); e.g. file:///abs/path")),
        }
        problems
    }

    /// Names that become parts of object keys and subjects.
    fn name_problems(&self, problems: &mut Vec<String>) {
        let worker = &self.preprocess.worker_id;
        if !worker.is_empty() && !is_safe_token(worker) {
            problems.push(format!(
                "preprocess.worker_id = {worker:?}: use only letters, digits, '_' and '-' (it becomes part of object keys)"
            ));
        }
        for (what, name) in [("dataset.name", &self.dataset.name), ("pipeline.run", &self.pipeline.run)] {
            if !is_safe_token(name) {
                problems.push(format!(
                    "{what} = {name:?}: use only letters, digits, '_' and '-' (it becomes a path and a subject)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    /// Loads the defaults with `toml` as the configuration file.
    fn load_file(toml: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, toml).map_err(|e| e.to_string())?;
        Settings::load(Some(&path), &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn integer_settings_refuse_fractions_naming_the_key() {
        let err = load_file("[pipeline]\nbatch_size = 8.5\n[train]\nmax_steps = 2.5e3\n[eval]\nbatch_size = 4.0\n")
            .expect_err("fractions refused");
        for wanted in ["pipeline.batch_size = 8.5", "train.max_steps = 2500.0", "eval.batch_size = 4.0"] {
            assert!(err.contains(wanted), "{wanted:?} missing from: {err}");
        }
        assert!(err.contains("whole number"), "{err}");
        let err = load_file("[train]\nwarmup_steps = true\n").expect_err("a boolean is not a count");
        assert!(err.contains("train.warmup_steps"), "{err}");
        let err = Settings::load(None, &[("pipeline.queue_capacity".into(), "2.5".into())])
            .expect_err("a fraction given as a flag")
            .to_string();
        assert!(err.contains("pipeline.queue_capacity"), "{err}");
        // Whole numbers and floats where floats belong are fine.
        let s = load_file("[pipeline]\nbatch_size = 8\n[model]\ndepth_multiplier = 0.5\n").expect("whole numbers");
        assert_eq!(s.pipeline.batch_size, 8);
        let s = Settings::load(None, &[("pipeline.batch_size".into(), "16".into())]).expect("a flag's whole number");
        assert_eq!(s.pipeline.batch_size, 16);
    }

    #[test]
    fn promotion_margins_are_fractions() {
        let s = Settings::load(None, &[]).expect("defaults");
        assert!(s.promotion.enabled && s.promotion.min_examples > 0);
        let err = load_file("[promotion]\nmin_precision_gain = -0.1\nmax_recall_drop = 2.0\nmin_examples = 0\n")
            .expect_err("out of range");
        for wanted in ["promotion.min_precision_gain = -0.1", "promotion.max_recall_drop = 2", "promotion.min_examples"]
        {
            assert!(err.contains(wanted), "{wanted:?} missing from: {err}");
        }
        let err = load_file("[promotion]\nmargin = 0.1\n").expect_err("unknown key");
        assert!(err.contains("margin"), "{err}");
    }

    #[test]
    fn serve_settings_are_checked() {
        let s = Settings::load(None, &[]).expect("defaults");
        assert_eq!(s.serve.listen_addr, "127.0.0.1:8080", "loopback by default");
        assert_eq!(s.serve.checkpoint, crate::settings::ServedCheckpoint::Promoted);
        assert!(!s.serve.bearer_token.is_set());
        let err = load_file("[serve]\nbatch_size = 0\nmax_wait = \"1m\"\npoll_interval = \"0s\"\ntop_k = 0\n")
            .expect_err("out of range");
        for wanted in ["serve.batch_size = 0", "serve.max_wait", "serve.poll_interval", "serve.top_k = 0"] {
            assert!(err.contains(wanted), "{wanted:?} missing from: {err}");
        }
        let err = load_file("[serve]\ncheckpoint = \"newest\"\n").expect_err("not a pointer");
        assert!(err.contains("serve.checkpoint") && err.contains("promoted"), "{err}");
        assert_eq!(s.serve.precision, crate::settings::PrecisionSetting::Auto, "as eval.precision");
        let s = load_file("[serve]\nprecision = \"bf16\"\n").expect("a precision");
        assert_eq!(s.serve.precision, crate::settings::PrecisionSetting::Bf16);
        let err = load_file("[serve]\nprecision = \"fp8\"\n").expect_err("not a precision");
        assert!(err.contains("serve.precision") && err.contains("fp8"), "{err}");
    }

    #[test]
    fn sizes_and_counts_have_upper_bounds_naming_the_key() {
        let err = load_file(
            "[model]\nimage_size = 100000\ndepth_multiplier = 1e6\nmin_depth = 100000\n\
             [pipeline]\nbatch_size = 65537\nqueue_capacity = 100001\nmax_image_pixels = 100000000000\n\
             [eval]\nbatch_size = 1000000\n",
        )
        .expect_err("out of bounds");
        for wanted in [
            "model.image_size = 100000",
            "model.depth_multiplier = 1000000",
            "model.min_depth = 100000",
            "pipeline.batch_size = 65537",
            "pipeline.queue_capacity = 100001",
            "pipeline.max_image_pixels = 100000000000",
            "eval.batch_size = 1000000",
        ] {
            assert!(err.contains(wanted), "{wanted:?} missing from: {err}");
        }
        // The bounds themselves are accepted.
        load_file(
            "[model]\nimage_size = 2048\ndepth_multiplier = 4.0\nmin_depth = 512\n\
             [pipeline]\nbatch_size = 65536\nqueue_capacity = 100000\n[eval]\nbatch_size = 65536\n",
        )
        .expect("at the bounds");
    }
}
