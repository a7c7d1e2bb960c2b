//! ringcast-bench (see docs/architecture.md): what the benchmark programs share.

pub mod netns;
