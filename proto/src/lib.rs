//! Wire messages shared by every service.
//!
//! * [`tensorflow`]: `tf.Example` with TensorFlow's field numbers.
//! * [`pipeline`]: the small control messages sent over NATS.

pub mod tensorflow {
    include!(concat!(env!("OUT_DIR"), "/tensorflow.rs"));
}

pub mod pipeline {
    include!(concat!(env!("OUT_DIR"), "/inception.pipeline.rs"));
}

pub use prost::{self, Message};
