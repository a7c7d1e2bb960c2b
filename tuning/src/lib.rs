//! ringcast-tune (see DESIGN.md).
