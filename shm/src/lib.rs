//! ringcast-shm (see DESIGN.md).
