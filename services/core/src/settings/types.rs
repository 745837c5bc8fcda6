//! Setting types that are more than a number or a string: durations written
//! with a unit (`"90s"`, `"500ms"`, `"15m"`), and the settings that take one
//! of a few words.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Parses a duration with a unit: a non-negative number followed by `ms`,
/// `s`, `m` or `h` (`"0.5s"`, `"500ms"`, `"2m"`, `"1h"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write a number and a unit, e.g. \"90s\" or \"500ms\""))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(format!("{text:?} has no unit: write e.g. \"{text}s\" (units: ms, s, m, h)")),
        other => return Err(format!("{text:?}: unknown unit {other:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is not a duration of zero or more"))
}

/// Serde's `deserialize_with` for a [`Duration`] setting written with a unit.
pub(super) fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration with a unit, such as \"90s\" or \"500ms\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write e.g. \"{v}s\" (units: ms, s, m, h)")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write e.g. \"{v}s\" (units: ms, s, m, h)")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!("{v} has no unit: write e.g. \"{v}s\" (units: ms, s, m, h)")))
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// How ingest checks an RGB JPEG that it keeps byte for byte (`ingest.jpeg_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JpegCheckSetting {
    /// Walk the whole marker structure without decoding a pixel (fast).
    Markers,
    /// Decode every pixel, as build_image_data.py does.
    Decode,
}

/// A dataset split (`ingest.incoming_split`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training images.
    Train,
    /// Validation images.
    Validation,
}

impl Split {
    /// The name in shard keys and subjects: `train` or `validation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
        }
    }
}

/// Where a model runs (`train.device`, `eval.device`): `auto`, `cpu`, or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSetting {
    /// CUDA device 0 when one is visible, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl std::str::FromStr for DeviceSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("device {other:?}: use auto, cpu or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSetting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The collective-communication library of multi-process training
/// (`distributed.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistributedBackend {
    /// Gloo on the CPU, NCCL on CUDA.
    Auto,
    /// Gloo (over TCP): CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors; needs a build with CUDA.
    Nccl,
}

/// The arithmetic of a model's forward and backward passes
/// (`train.precision`, `eval.precision`, `serve.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    /// Chosen per device from measurements (docs/benchmarks.md): bf16 on
    /// CUDA and on CPUs with bf16 instructions (`avx512_bf16`, `amx_bf16`),
    /// fp32 on other CPUs.
    Auto,
    /// Full precision throughout.
    Fp32,
    /// Convolutions and matrix products in bfloat16 (autocast), the rest and
    /// the weights in fp32.
    Bf16,
    /// As bf16 in IEEE half, with dynamic loss scaling; CUDA only.
    Fp16,
}

/// The update rule of the trainer (`train.optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerSetting {
    /// RMSProp with TensorFlow 1's semantics, as inception_train.py.
    RmsProp,
    /// SGD with momentum (optionally Nesterov).
    Sgd,
    /// Adam with decoupled weight decay.
    AdamW,
}

/// The learning-rate schedule after the warm-up (`train.lr_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleSetting {
    /// The original's staircase: times `learning_rate_decay_factor` every `num_epochs_per_decay` epochs.
    Staircase,
    /// Half a cosine from the learning rate down to `cosine_final_fraction` of it.
    Cosine,
    /// The learning rate throughout.
    Constant,
}

/// A resize method of `tf.image.resize_images` (`augment.resize_methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMethodSetting {
    /// Bilinear interpolation.
    Bilinear,
    /// Nearest neighbour.
    Nearest,
    /// Bicubic interpolation.
    Bicubic,
    /// Area averaging.
    Area,
}

impl std::str::FromStr for ResizeMethodSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "bilinear" => Ok(Self::Bilinear),
            "nearest" => Ok(Self::Nearest),
            "bicubic" => Ok(Self::Bicubic),
            "area" => Ok(Self::Area),
            other => Err(format!("unknown resize method {other:?} (use bilinear, nearest, bicubic or area)")),
        }
    }
}

/// Serde's `deserialize_with` for a list of resize methods, given as a
/// list or as one comma-separated string (what an environment variable or
/// `--set` can hold).
pub(super) fn deserialize_resize_methods<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ResizeMethodSetting>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Methods {
        List(Vec<String>),
        Text(String),
    }
    let names = match Methods::deserialize(deserializer)? {
        Methods::List(list) => list,
        Methods::Text(text) => text.split(',').map(str::to_string).collect(),
    };
    names.iter().map(|n| n.parse().map_err(serde::de::Error::custom)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 1.5 s "), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        assert!(parse_duration("90d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("NaNs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn resize_methods_parse_from_names() {
        assert_eq!("area".parse(), Ok(ResizeMethodSetting::Area));
        assert_eq!(" bicubic".parse(), Ok(ResizeMethodSetting::Bicubic));
        assert!("lanczos".parse::<ResizeMethodSetting>().unwrap_err().contains("unknown resize method"));
    }

    #[test]
    fn devices_parse_and_print_back() {
        for text in ["auto", "cpu", "cuda:0", "cuda:3"] {
            let device: DeviceSetting = text.parse().unwrap();
            assert_eq!(device.to_string(), text);
        }
        assert!("gpu".parse::<DeviceSetting>().unwrap_err().contains("use auto, cpu or cuda:N"));
        assert!("cuda:x".parse::<DeviceSetting>().is_err());
    }
}
