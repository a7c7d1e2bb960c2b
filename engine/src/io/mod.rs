//! The io_uring event loop that drives a Totem node over UDP (see DESIGN.md).
