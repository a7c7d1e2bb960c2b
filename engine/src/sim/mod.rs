//! The deterministic cluster simulator (see DESIGN.md, `sim/`).
