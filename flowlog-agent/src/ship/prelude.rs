//! What a destination's folder needs from the rest of the ship stage, in one
//! import (as Vector's `sinks::prelude`): its output syntax, options and
//! start, the AWS error classes, the retry vocabulary, the spool's batches
//! and the stop signal.

pub use super::{
    aws::{classify, OutputAws},
    destination::{BoxFut, Destination, ShipStats},
    output::{parse_aws_scheme, query, OutputSpec, Registration, StartContext, StartFut, StartupCheck},
    retry::{retry, startup_check, Failure, Interrupted, RetryPolicy},
    spool::Batch,
    stop::Stop,
};
