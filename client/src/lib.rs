//! ringcast (see DESIGN.md).
