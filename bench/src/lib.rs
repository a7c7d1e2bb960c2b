//! ringcast-bench (see DESIGN.md).
