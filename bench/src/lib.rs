//! ringcast-bench (see docs/architecture.md).
